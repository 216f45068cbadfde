"""W-MSE (Ermolov, Siarohin, Sangineto & Sebe, ICML 2021), Algorithm 1 (W-MSE 2).

    z = g(f(v)) for two views; in sub-batches of w_size, per view:
    W = L^-1 with L L^T = Cov(z)              (Cholesky whitening), z^ = W (z - mean z)
    L = mean 2 - 2 cos(z^_1, z^_2)            (MSE of the L2-normalised whitened embeddings)

Authors' code (CIFAR-10, W-MSE 2): head Linear-BN-ReLU-Linear, 1024 hidden, 64-d embedding;
w_size 128, one whitening iteration; Adam lr 3e-3, weight decay 1e-6, batch 512, 500 warm-up
steps, step decay.
Short run: batch 128 = one whitening sub-batch (w_size must exceed the 64 dimensions), 10 % warm-up,
cosine instead of the step decay; hidden width max(512, 1024 x D / 2048).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import Recipe, Reference, Run, head_width, mlp

RECIPE = Recipe("adam", lr=3e-3, scaling="none", weight_decay=1e-6, batch_size=128, warmup=0.1)
W_SIZE, EMBEDDING = 128, 64


def whiten(z):
    """(z - mean) L^-T with L the Cholesky factor of the covariance: identity covariance."""
    z = z - z.mean(dim=0)
    cov = z.T @ z / (len(z) - 1)
    eye = torch.eye(z.shape[1])
    inverse = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), eye, upper=False)
    return z @ inverse.T


class WMSE(Reference):
    def __init__(self, backbone, run: Run):
        super().__init__(backbone, run)
        self.head = mlp([run.feature_dim, head_width(1024, run.feature_dim), EMBEDDING])

    def loss(self, views, indices, labels):
        z1, z2 = (self.head(self.backbone(v)) for v in views)
        losses = []
        for part in torch.randperm(len(z1)).split(W_SIZE):
            if len(part) > EMBEDDING:
                w1, w2 = whiten(z1[part]), whiten(z2[part])
                losses.append(2 - 2 * F.cosine_similarity(w1, w2, dim=1).mean())
        return torch.stack(losses).mean()
