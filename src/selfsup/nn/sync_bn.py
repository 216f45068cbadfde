"""Batch normalisation with statistics over the global batch of all ranks.

On CUDA this is torch's ``SyncBatchNorm``. On CPU (gloo), where torch's version refuses to
run, ``GlobalBatchNorm`` gathers every rank's per-channel (mean_r, var_r, n_r) with a gradient
path and combines them without cancellation (Chan et al. 1979):
    mean = sum_r n_r mean_r / N,   var = sum_r n_r (var_r + (mean_r - mean)^2) / N   (biased)
so that the output and the gradients equal one process holding the whole batch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup import distributed


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm1d/2d whose training statistics cover all ranks (CPU and GPU)."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"batch norm expects [B, C, ...] input, got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and distributed.is_distributed()):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        local_var, local_mean = torch.var_mean(xf, dim=dims, correction=0)
        count = torch.full_like(local_mean, xf.numel() / xf.shape[1])
        per_rank = distributed.gather(torch.stack([local_mean, local_var, count]).unsqueeze(0))  # [W, 3, C]
        means, variances, counts = per_rank.unbind(1)
        total = counts.sum(0)
        mean = (counts * means).sum(0) / total
        var = (counts * (variances + (means - mean).square())).sum(0) / total
        if self.track_running_stats:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 0.1
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * total / (total - 1).clamp_min(1), momentum)
                self.num_batches_tracked += 1
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_to_global_batchnorm(module: nn.Module, cuda: bool) -> nn.Module:
    """Every BatchNorm layer of ``module`` computing global-batch statistics, sharing its parameters and buffers."""
    if cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        converted = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                    module.track_running_stats, device=module.running_mean.device)
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        if module.track_running_stats:
            converted.running_mean, converted.running_var = module.running_mean, module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        return converted
    for name, child in module.named_children():
        setattr(module, name, convert_to_global_batchnorm(child, cuda))
    return module
