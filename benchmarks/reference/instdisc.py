"""Instance Discrimination (Wu, Xiong, Yu & Lin, CVPR 2018), Eq. 2-3 with the memory bank of Sec. 3.2.

    v_i = normalise(f(x_i)) (128-d);  P(i | v) = exp(v_i^T v / tau) / sum_j exp(v_j^T v / tau)
    L = -sum_i log P(i | f(x_i)),  the v_j read from a memory bank V of all N images
    V_i <- normalise(m V_i + (1 - m) f(x_i)),  m = 0.5

Authors' CIFAR code (lemniscate.pytorch, cifar.py): linear 128-d head, tau 0.1, bank momentum 0.5,
SGD lr 0.03 at batch 128, momentum 0.9, weight decay 5e-4, one view per image, step decay; with
``--nce-k 0`` it computes the exact softmax above (``LinearAverage``) instead of the NCE estimate,
which is what a few thousand images afford. Short run: cosine instead of the step decay.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import Recipe, Reference, Run

RECIPE = Recipe("sgd", lr=0.03, lr_batch=128, weight_decay=5e-4, batch_size=128)
TAU, BANK_MOMENTUM, DIM = 0.1, 0.5, 128


class InstDisc(Reference):
    num_views = 1

    def __init__(self, backbone, run: Run):
        super().__init__(backbone, run)
        self.fc = nn.Linear(run.feature_dim, DIM)
        bound = 1 / (DIM / 3) ** 0.5
        self.register_buffer("bank", torch.empty(run.num_samples, DIM).uniform_(-bound, bound))

    def loss(self, views, indices, labels):
        v = F.normalize(self.fc(self.backbone(views[0])), dim=1)
        self.seen = (indices, v.detach())
        return F.cross_entropy(v @ self.bank.T / TAU, indices)

    def after_step(self, progress):
        indices, v = self.seen
        self.bank[indices] = F.normalize(BANK_MOMENTUM * self.bank[indices] + (1 - BANK_MOMENTUM) * v, dim=1)
