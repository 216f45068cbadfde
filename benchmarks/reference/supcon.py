"""Supervised Contrastive Learning (Khosla et al., NeurIPS 2020), L_out (Eq. 2).

    z = normalise(proj(f(x))) for 2 views of N images (2N anchors); P(i) = other samples of i's class
    L = sum_i -1/|P(i)| sum_{p in P(i)} log exp(z_i.z_p / tau) / sum_{a != i} exp(z_i.z_a / tau)

Authors' code (SupContrast, CIFAR): head Linear-ReLU-Linear to 128; tau 0.1, the loss scaled by
tau / 0.07 (base temperature); SGD lr 0.5 at batch 1024, momentum 0.9, weight decay 1e-4, warm-up
(batches above 256), cosine.
Short run: batch 128 with the linear rule (lr 0.0625), warm-up 10 % of the run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import Recipe, Reference, Run

RECIPE = Recipe("sgd", lr=0.5, lr_batch=1024, weight_decay=1e-4, batch_size=128, warmup=0.1)
TAU, BASE_TAU = 0.1, 0.07


def supcon_loss(z, labels):
    n = len(z)
    logits = z @ z.T / TAU
    self_mask = torch.eye(n, dtype=torch.bool)
    log_prob = logits.masked_fill(self_mask, float("-inf")).log_softmax(dim=1)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    per_anchor = (log_prob.masked_fill(~positives, 0).sum(1)) / positives.sum(1).clamp(min=1)
    return -(TAU / BASE_TAU) * per_anchor[positives.any(1)].mean()


class SupCon(Reference):
    def __init__(self, backbone, run: Run):
        super().__init__(backbone, run)
        d = run.feature_dim
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 128))

    def loss(self, views, indices, labels):
        z = torch.cat([F.normalize(self.head(self.backbone(v)), dim=1) for v in views])
        return supcon_loss(z, labels.repeat(len(views)))
