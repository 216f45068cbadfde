"""BYOL (Grill et al., NeurIPS 2020), Algorithm 1.

    online: y = f_theta(v), z = g_theta(y), p = q_theta(z);  target: z' = g_xi(f_xi(v'))
    L = || p / |p| - sg(z') / |z'| ||^2 = 2 - 2 cos(p, sg(z')), symmetrised over (v, v')
    xi <- tau xi + (1 - tau) theta,   tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2

Paper: projector and predictor Linear-BN-ReLU-Linear, 4096 hidden, 256 out; tau_base 0.996;
LARS lr 0.2 x B/256 = 3.2 at batch 4096, weight decay 1.5e-6, 10 warm-up epochs, cosine.
One forward pass per view (separate BN statistics), as the authors' code.
Short run: batch 128, LARS lr 3.2 kept (``common.Recipe``), warm-up 10 % of the run; tau_base lowered
so the target lags at most 5 % of the run (``common.short_run_momentum``: 0.89 for 180 steps);
hidden width max(512, 4096 x D / 2048).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .common import (
    Recipe,
    Reference,
    Run,
    copy_frozen,
    cosine_momentum,
    ema_update,
    head_width,
    mlp,
    short_run_momentum,
)

RECIPE = Recipe("lars", lr=3.2, lr_batch=4096, scaling="none", weight_decay=1.5e-6, batch_size=128, warmup=0.1)


def regression_loss(p, z):
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=1).mean()


class BYOL(Reference):
    def __init__(self, backbone, run: Run):
        super().__init__(backbone, run)
        hidden = head_width(4096, run.feature_dim)
        self.online = nn.Sequential(backbone, mlp([run.feature_dim, hidden, 256]))
        self.predictor = mlp([256, hidden, 256])
        self.target = copy_frozen(self.online)
        self.tau_base = short_run_momentum(0.996, run.total_steps)

    def loss(self, views, indices, labels):
        p1, p2 = (self.predictor(self.online(v)) for v in views)
        z1, z2 = (self.target(v) for v in views)
        return regression_loss(p1, z2) + regression_loss(p2, z1)

    def after_step(self, progress):
        ema_update(self.target, self.online, cosine_momentum(self.tau_base, progress))
