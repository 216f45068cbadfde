"""Prototypes: K trainable (or k-means-set) unit vectors scored against normalised embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Prototypes(nn.Module):
    """A bias-free linear layer whose rows c_k are kept on the unit sphere: scores = z C^T.

    SwAV (Caron et al. 2020, Sec. 3.1) normalises C after every update so that, with
    L2-normalised z, scores are cosine similarities; DeepCluster v2 copies k-means
    centroids into C with ``set_``.
    """

    def __init__(self, dim: int, num_prototypes: int):
        super().__init__()
        if num_prototypes < 1 or dim < 1:
            raise ValueError(f"prototypes need positive sizes, got dim={dim}, num_prototypes={num_prototypes}")
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's initialisation
        self.normalize_()

    def forward(self, z: Tensor) -> Tensor:
        return z @ self.weight.T.to(z.dtype)

    @torch.no_grad()
    def normalize_(self) -> None:
        """Project every prototype back onto the unit sphere."""
        self.weight.copy_(F.normalize(self.weight, dim=1))

    @torch.no_grad()
    def set_(self, centroids: Tensor) -> None:
        """Replace the prototypes by ``centroids`` [K, dim], normalised."""
        if centroids.shape != self.weight.shape:
            raise ValueError(
                f"centroids of shape {tuple(centroids.shape)} do not fit prototypes of shape {tuple(self.weight.shape)}"
            )
        self.weight.copy_(F.normalize(centroids.to(self.weight.dtype), dim=1))
