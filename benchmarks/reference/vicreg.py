"""VICReg (Bardes, Ponce & LeCun, ICLR 2022), Algorithm 1.

    inv = mean ||z_a - z_b||^2                                              (MSE)
    var = mean_j relu(1 - sqrt(Var(z_j) + 1e-4)), for z_a and z_b
    cov = sum_{i != j} Cov(z)_ij^2 / d, for z_a and z_b
    L = lambda inv + mu (var_a + var_b) + nu (cov_a + cov_b),  lambda = mu = 25, nu = 1

Paper / authors' code: expander of 3 layers, 8192 wide (Linear-BN-ReLU twice, then Linear);
LARS, lr 0.2 x B/256 = 1.6 at batch 2048, weight decay 1e-6, 10 warm-up epochs, cosine.
Short run: batch 128, lr 1.6 kept (``common.Recipe``), warm-up 10 %; width max(512, 8192 x D / 2048).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import Recipe, Reference, Run, head_width, mlp

RECIPE = Recipe("lars", lr=1.6, lr_batch=2048, scaling="none", weight_decay=1e-6, batch_size=128, warmup=0.1)


def variance(z):
    return F.relu(1 - torch.sqrt(z.var(dim=0) + 1e-4)).mean()


def covariance(z):
    n, d = z.shape
    z = z - z.mean(dim=0)
    cov = z.T @ z / (n - 1)
    return (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d


def vicreg_loss(z_a, z_b, lambd=25.0, mu=25.0, nu=1.0):
    return (lambd * F.mse_loss(z_a, z_b) + mu * (variance(z_a) + variance(z_b))
            + nu * (covariance(z_a) + covariance(z_b)))


class VICReg(Reference):
    def __init__(self, backbone, run: Run):
        super().__init__(backbone, run)
        width = head_width(8192, run.feature_dim)
        self.expander = mlp([run.feature_dim, width, width, width])

    def loss(self, views, indices, labels):
        z_a, z_b = (self.expander(self.backbone(v)) for v in views)
        return vicreg_loss(z_a, z_b)
