"""Deep InfoMax, local objective (Hjelm et al. 2019): the global vector of an image must tell its
own local features apart from those of other images.

    C = E_local(x)          [B, C, h, w] a stage's map from the middle of the trunk (``head.local_stage``)
    Y = pool(E_rest(C))     [B, D] the last stages on top of C, pooled: the representation users keep
    T(C_ij, Y) = phi_local(C)_ij . phi_global(Y)     encode-and-dot-product critic (Appendix A.2)
    L = mean over views of deep_infomax(phi_local(C), phi_global(Y), estimator)   (JSD, eq. 4; or infoNCE, eq. 5)

The local map comes from the middle of the encoder, as in the authors' code (rdevon/DIM,
cortex_DIM/configs/convnets.py and resnets.py ``local_task_idx``: after two of three conv stages, 8x8
at 32 px), not from its last map: with Y a plain pooling of C, an image's own local features are the
terms of its global vector, and matching them needs nothing the encoder has to learn. The presets take
stage 2 of the four-stage backbones (ResNet ``layer3``, the convnet's third block: 8x8 at 32 px, as the
authors' map). Its cost is the 1x1 convs over every cell: ``mi_units`` squared per cell, 4x more at stage 1.

phi_local is a 1x1-conv residual block, phi_global an MLP residual block, both to ``mi_units``
with a final LayerNorm on the local side, as the authors' code (rdevon/DIM, mi_networks.py).
The negatives of an image are the other images of the same view's batch; with two views each
view is a batch of its own, and both global embeddings feed the collapse monitors.
The adversarial prior-matching term (Sec. 3.3) is not implemented (gamma = 0).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup.losses import deep_infomax
from selfsup.methods.base import Method, RunInfo, StepOutput


class LocalEncoder(nn.Module):
    """1x1 convs: x + ReLU-MLP(x) in channel space, then LayerNorm over channels at every location."""

    def __init__(self, in_channels: int, units: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, units, 1, bias=False), nn.BatchNorm2d(units), nn.ReLU(), nn.Conv2d(units, units, 1)
        )
        self.shortcut = nn.Conv2d(in_channels, units, 1, bias=False)
        self.norm = nn.LayerNorm(units)

    def forward(self, x: Tensor) -> Tensor:
        h = self.block(x) + self.shortcut(x)
        return self.norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GlobalEncoder(nn.Module):
    """x + ReLU-MLP(x): a linear shortcut plus a 2-layer MLP with BN."""

    def __init__(self, in_dim: int, units: int):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(in_dim, units), nn.BatchNorm1d(units), nn.ReLU(), nn.Linear(units, units))
        self.shortcut = nn.Linear(in_dim, units)

    def forward(self, y: Tensor) -> Tensor:
        return self.block(y) + self.shortcut(y)


class DeepInfoMax(Method):
    name = "dim"
    family = "contrastive"
    prevents_collapse = "local features must identify their own image's global vector (JSD)"
    paper = "Learning deep representations by mutual information estimation and maximization (Hjelm et al., ICLR)"
    year = 2019

    def __init__(self, encoder: nn.Module, cfg: dict, info: RunInfo):
        super().__init__(encoder, cfg, info)
        if not hasattr(encoder, "feature_maps"):
            raise ValueError("dim needs an encoder with feature_maps(x) -> its stages' [B, C, h, w] maps; "
                             "use a resnet or convnet backbone")
        units = int(cfg["head"]["mi_units"])
        self.local_stage = int(cfg["head"]["local_stage"])
        self.local_encoder = LocalEncoder(self._local_channels(encoder, info, self.local_stage), units)
        self.global_encoder = GlobalEncoder(info.feature_dim, units)

    @staticmethod
    @torch.no_grad()
    def _local_channels(encoder: nn.Module, info: RunInfo, stage: int) -> int:
        was_training = encoder.training
        encoder.eval()
        probe = torch.zeros(2, info.channels, info.input_size, info.input_size, device=next(encoder.parameters()).device)
        maps = encoder.feature_maps(probe)
        encoder.train(was_training)
        last = len(maps) - 1
        if not 0 <= (stage + len(maps) if stage < 0 else stage) < last:
            raise ValueError(f"head.local_stage={stage}: the backbone has {len(maps)} stages and the local map must come "
                             f"before the last; use 0 to {last - 1}")
        shape = maps[stage].shape
        if len(shape) != 4:
            raise ValueError(f"dim needs [B, C, h, w] stage maps from feature_maps, got {tuple(shape)}; use a resnet")
        return shape[1]

    def _represent(self, x: Tensor) -> tuple[Tensor, Tensor]:
        maps = self.encoder.feature_maps(x)
        return maps[self.local_stage], self.encoder.pool(maps[-1]).flatten(1)

    def forward(self, views: list[Tensor], labels: Tensor | None = None, indices: Tensor | None = None) -> StepOutput:
        losses, features, embeddings = [], [], []
        for x in views[:2]:
            local, y = self._represent(x)
            g = self.global_encoder(y)
            losses.append(deep_infomax(self.local_encoder(local), g, gather=True, **self.cfg["loss"]))
            features.append(y)
            embeddings.append(g)
        pair = (embeddings[0], embeddings[-1]) if len(embeddings) == 2 else None
        return StepOutput(loss=torch.stack(losses).mean(), features=features[0], embeddings=pair)
