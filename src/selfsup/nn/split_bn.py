"""Split batch normalisation: several devices' per-device BatchNorm, emulated in one process.

MoCo's shuffling BN (He et al. 2020, Sec. 3.3) relies on each GPU normalising its own share of
the batch. In one process the authors' CIFAR-10 demo (facebookresearch/moco,
colab/moco_cifar10_demo.ipynb, ``SplitBatchNorm``, ``--bn-splits 8``) splits every BatchNorm of
both encoders into S groups instead. Here group g holds the g-th contiguous block of B/S samples,
as rank g would under DDP, and in training each group is normalised with its own statistics:

    y_i = gamma * (x_i - mean_g) / sqrt(var_g + eps) + beta,   g = the group of sample i

Running statistics follow the authors' layer: each group updates a copy of the running buffers
with the usual momentum and the copies are averaged,
    running_mean <- (1 - m) running_mean + m * mean_g(mean_g)   (var: the groups' unbiased variances).
Evaluation mode, S = 1, and runs under DDP (where each rank already is one group) use plain BatchNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import distributed


class SplitBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm1d/2d whose training statistics are computed per group of ``B / num_splits`` samples."""

    def __init__(self, num_features: int, num_splits: int, **kwargs):
        super().__init__(num_features, **kwargs)
        if num_splits < 1:
            raise ValueError(f"batch norm needs at least one split, got num_splits={num_splits}")
        self.num_splits = num_splits

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"batch norm expects [B, C, ...] input, got shape {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_splits={self.num_splits}"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.num_splits == 1 or distributed.is_distributed():
            return super().forward(x)
        self._check_input_dim(x)
        splits, batch = self.num_splits, x.shape[0]
        if batch % splits:
            raise ValueError(
                f"a batch of {batch} samples cannot be split into {splits} batch-norm groups: use a batch size "
                f"that is a multiple of {splits}, or set head.bn_splits to a divisor of it"
            )
        # Each group is a view of the batch (contiguous in NCHW and in channels_last alike), normalised by its
        # own batch_norm call; only the concatenation of the outputs copies.
        means = variances = [None] * splits
        momentum = 0.0
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            means = [self.running_mean.clone() for _ in range(splits)]
            variances = [self.running_var.clone() for _ in range(splits)]
        groups = x.split(batch // splits)
        y = torch.cat([
            F.batch_norm(group, mean, var, self.weight, self.bias, True, momentum, self.eps)
            for group, mean, var in zip(groups, means, variances)
        ])
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.copy_(torch.stack(means).mean(0))
                self.running_var.copy_(torch.stack(variances).mean(0))
        return y


def convert_to_split_batchnorm(module: nn.Module, num_splits: int) -> nn.Module:
    """Every BatchNorm layer of ``module`` as a ``SplitBatchNorm`` sharing its parameters and buffers."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, SplitBatchNorm):
        tensors = [*module.parameters(), *module.buffers()]
        converted = SplitBatchNorm(
            module.num_features, num_splits, eps=module.eps, momentum=module.momentum, affine=module.affine,
            track_running_stats=module.track_running_stats, device=tensors[0].device if tensors else None,
        )
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        if module.track_running_stats:
            converted.running_mean, converted.running_var = module.running_mean, module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        setattr(module, name, convert_to_split_batchnorm(child, num_splits))
    return module
