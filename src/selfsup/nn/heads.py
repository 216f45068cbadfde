"""Projector and predictor MLPs."""

from __future__ import annotations

from torch import nn


def mlp(
    in_dim: int,
    hidden_dim: int,
    out_dim: int,
    num_layers: int = 2,
    batch_norm: bool = True,
    last_batch_norm: bool = False,
    last_bias: bool = True,
) -> nn.Sequential:
    """Linear -> [BN] -> ReLU repeated ``num_layers - 1`` times, then Linear [-> BN without affine].

    SimCLR v2 / MoCo v2 / BYOL projectors are ``num_layers=2`` with BN; Barlow Twins and
    VICReg use 3 layers; SimSiam's projector ends with BN (``last_batch_norm=True``).
    """
    if num_layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got num_layers={num_layers}")
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
    return nn.Sequential(*layers)
