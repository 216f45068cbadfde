"""Collapse monitors on two batches of embeddings of the same images.

- ``z_std``: mean over dimensions of the per-dimension std of L2-normalised embeddings.
  Healthy embeddings spread over the sphere give about 1/sqrt(d); complete collapse gives 0
  (Chen & He 2021, SimSiam, Sec. 4.1). ``z_std_ratio`` = z_std * sqrt(d), about 1 when healthy.
- ``effective_rank``: exp of the entropy of the normalised singular values of the centred
  embeddings (Roy & Vetterli 2007); d when every direction is used, 1 when all lie on a line.
- ``alignment`` and ``uniformity`` (Wang & Isola 2020) of the normalised embeddings.

``feature_monitors`` gives the first two for one set of features (a trained encoder's, without a second view):
what a run on unlabelled data reports instead of kNN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses import alignment, uniformity


@torch.no_grad()
def effective_rank(z: Tensor) -> float:
    singular = torch.linalg.svdvals(z.double() - z.double().mean(0))
    total = singular.sum()
    if total <= 0:
        return 1.0
    p = singular / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@torch.no_grad()
def collapse_monitors(z1: Tensor, z2: Tensor) -> dict[str, float]:
    """All monitors for a pair of [B, D] embedding batches (rows are the same images)."""
    n1 = F.normalize(z1.float(), dim=1)
    n2 = F.normalize(z2.float(), dim=1)
    d = n1.shape[1]
    z_std = n1.std(0).mean().item() if len(n1) > 1 else 0.0
    return {
        "z_std": z_std,
        "z_std_ratio": z_std * math.sqrt(d),
        "effective_rank": effective_rank(z1),
        "alignment": alignment(n1, n2).item(),
        "uniformity": uniformity(n1).item() if len(n1) > 1 else 0.0,
    }


MONITOR_SAMPLES = 8192  # features the final monitors use, evenly spread: an SVD of [N, D] grows with N


@torch.no_grad()
def feature_monitors(features: Tensor) -> dict[str, float]:
    """``feature_std``, ``feature_std_ratio`` (about 1 when healthy, 0 collapsed) and ``feature_effective_rank`` (of
    ``feature_dim``) of [N, D] features, on at most ``MONITOR_SAMPLES`` of them."""
    sample = features[:: max(1, len(features) // MONITOR_SAMPLES)][:MONITOR_SAMPLES].float()
    normalised = F.normalize(sample, dim=1)
    d = normalised.shape[1]
    std = normalised.std(0).mean().item() if len(normalised) > 1 else 0.0
    return {"feature_std": std, "feature_std_ratio": std * math.sqrt(d), "feature_effective_rank": effective_rank(sample),
            "feature_dim": d}
