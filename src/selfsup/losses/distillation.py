"""Distillation losses: a predictor regresses a stop-gradient target (BYOL, SimSiam)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["negative_cosine"]


def negative_cosine(p: Tensor, z: Tensor) -> Tensor:
    """SimSiam's D(p, z) = -mean_i cos(p_i, stopgrad(z_i)), in [-1, 1].

    Chen & He 2021, Eq. 1 (SimSiam); Grill et al. 2020, Eq. 2 (BYOL) uses the same
    quantity as ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z), i.e. ``2 + 2 * negative_cosine(p, z)``.
    The gradient reaches ``p`` only: ``z`` is detached (the stop-gradient). Computed in
    float32 for bf16 inputs; a zero vector has cosine 0 with everything.
    """
    dtype = torch.promote_types(p.dtype, torch.float32)
    p = F.normalize(p.to(dtype), dim=-1)
    z = F.normalize(z.detach().to(dtype), dim=-1)
    return -(p * z).sum(dim=-1).mean()
