"""Contrastive losses (initial nt_xent; the losses issue completes and verifies this file)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup import distributed

__all__ = ["nt_xent"]


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5, gather: bool = False) -> Tensor:
    """SimCLR's NT-Xent: 2N anchors, each with its other view as positive and 2N-2 negatives."""
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    local = torch.cat([z1, z2])
    n = z1.shape[0]
    if gather:
        everyone = torch.cat([distributed.gather(z1), distributed.gather(z2)])
        offset = distributed.rank() * n
        total = everyone.shape[0] // 2
    else:
        everyone, offset, total = local, 0, n
    logits = local @ everyone.T / temperature
    rows = torch.arange(2 * n, device=z1.device)
    own = torch.cat([rows[:n] + offset, rows[n:] - n + total + offset])
    positive = torch.cat([rows[n:] - n + total + offset, rows[:n] + offset])
    logits[rows, own] = float("-inf")
    return F.cross_entropy(logits, positive)
