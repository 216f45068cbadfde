"""MoCo v3 (Chen, Xie & He, ICCV 2021), Algorithm 1, ResNet variant.

    q_i = pred(proj(f(x_i))), k_i = sg(proj_m(f_m(x_i))), L2-normalised; in-batch negatives
    ctr(q, k) = 2 tau CE(q k^T / tau, identity);  L = ctr(q1, k2) + ctr(q2, k1)
    momentum encoder: m from 0.99 to 1 on a cosine schedule (as BYOL)

Authors' code (ResNet-50): projector Linear-BN-ReLU-Linear-BN (no affine on the last BN), 4096
hidden, 256 out; predictor Linear-BN-ReLU-Linear (no last BN); no biases; tau 1.0; LARS lr 0.6 x
B/256 = 9.6 at batch 4096, weight decay 1e-6, 10 warm-up epochs, cosine.
Short run: batch 128, lr 9.6 kept (``common.Recipe``), warm-up 10 %; m lowered so the momentum
encoder lags at most 5 % of the run; hidden width max(512, 4096 x D / 2048).
"""

from __future__ import annotations

import torch
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

RECIPE = Recipe("lars", lr=9.6, lr_batch=4096, scaling="none", weight_decay=1e-6, batch_size=128, warmup=0.1)
TAU = 1.0


def ctr(q, k):
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / TAU
    return 2 * TAU * F.cross_entropy(logits, torch.arange(len(q)))


class MoCoV3(Reference):
    def __init__(self, backbone, run: Run):
        super().__init__(backbone, run)
        hidden = head_width(4096, run.feature_dim)
        self.base = nn.Sequential(backbone, mlp([run.feature_dim, hidden, 256], last_bn=True, bias=False))
        self.predictor = mlp([256, hidden, 256], bias=False)
        self.momentum_encoder = copy_frozen(self.base)
        self.m_base = short_run_momentum(0.99, run.total_steps)

    def loss(self, views, indices, labels):
        q1, q2 = (self.predictor(self.base(v)) for v in views)
        with torch.no_grad():
            k1, k2 = (self.momentum_encoder(v) for v in views)
        return ctr(q1, k2) + ctr(q2, k1)

    def after_step(self, progress):
        ema_update(self.momentum_encoder, self.base, cosine_momentum(self.m_base, progress))
