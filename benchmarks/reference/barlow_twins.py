"""Barlow Twins (Zbontar, Jing, Misra, LeCun & Deny, ICML 2021), Algorithm 1.

    z_a, z_b = projector(f(y_a)), projector(f(y_b)), each batch-normalised over the batch
    C = z_a^T z_b / N                                           (cross-correlation, D x D)
    L = sum_i (1 - C_ii)^2 + lambda sum_i sum_{j != i} C_ij^2,  lambda = 0.0051

Paper / authors' code: projector of 3 layers, 8192 wide (Linear-BN-ReLU twice, then Linear);
LARS, lr 0.2 for weights and 0.0048 for biases and BN per 256 (1.6 at batch 2048), weight decay
1.5e-6, 10 warm-up epochs, cosine.
Short run: batch 128, lr 1.6 kept (``common.Recipe``), biases at 0.0048 / 0.2 of it; warm-up 10 %;
width max(512, 8192 x D / 2048).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import Recipe, Reference, Run, head_width, mlp

RECIPE = Recipe("lars", lr=1.6, lr_batch=2048, scaling="none", weight_decay=1.5e-6, batch_size=128, warmup=0.1)
LAMBDA = 0.0051


def barlow_twins_loss(z_a, z_b, lambd: float = LAMBDA):
    n, d = z_a.shape
    c = F.batch_norm(z_a, None, None, training=True).T @ F.batch_norm(z_b, None, None, training=True) / n
    on_diagonal = (torch.diagonal(c) - 1).pow(2).sum()
    off_diagonal = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diagonal + lambd * off_diagonal


class BarlowTwins(Reference):
    def __init__(self, backbone, run: Run):
        super().__init__(backbone, run)
        width = head_width(8192, run.feature_dim)
        self.projector = mlp([run.feature_dim, width, width, width])

    def param_groups(self):
        weights = [p for p in self.parameters() if p.ndim > 1]
        biases = [p for p in self.parameters() if p.ndim == 1]
        return [{"params": weights}, {"params": biases, "lr_scale": 0.0048 / 0.2}]

    def loss(self, views, indices, labels):
        z_a, z_b = (self.projector(self.backbone(v)) for v in views)
        return barlow_twins_loss(z_a, z_b)
