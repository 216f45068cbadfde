"""Projector and predictor MLPs."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ChannelScale(nn.Module):
    """A learnable per-feature scale gamma, y = gamma * x: after BatchNorm without affine, BN with gamma and no beta."""

    def __init__(self, num_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int = 2,
    batch_norm: bool = True,
    last_batch_norm: bool = False,
    last_bias: bool = True,
    last_bn_scale: bool = False,
) -> nn.Sequential:
    """Linear -> [BN] -> ReLU repeated ``num_layers - 1`` times, then Linear [-> BN without affine [-> gamma]].

    SimCLR v2 / MoCo v2 / BYOL projectors are ``num_layers=2`` with BN; Barlow Twins and
    VICReg use 3 layers; SimSiam's projector ends with BN (``last_batch_norm=True``); SimCLR's
    ends with BN that has a scale but no centre (``last_bn_scale=True``: TF's center=False).
    """
    if num_layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got num_layers={num_layers}")
    if last_bn_scale and not last_batch_norm:
        raise ValueError("last_bn_scale scales the final BatchNorm: it needs last_batch_norm=True")
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=last_bias and not last_batch_norm))
    if last_batch_norm:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    if last_bn_scale:
        layers.append(ChannelScale(out_dim))
    return nn.Sequential(*layers)
