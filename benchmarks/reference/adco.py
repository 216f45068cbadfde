"""AdCo (Hu, Wang, Hu & Qi, CVPR 2021): negatives as parameters, trained to be hard (Eq. 3-6).

    q = normalise(f_q(x)), k = sg(normalise(f_k(x'))) (MoCo v2's encoders, shuffle BN, momentum m)
    negatives n_1..n_K = columns of W, normalised; logits of q_i: [q_i.k_1 .. q_i.k_B, q_i.n_1 .. q_i.n_K]
    encoder:    min  L(tau)     = CE(logits / tau, i)      (the batch's other keys are negatives too)
    negatives:  max  L(tau_mem) = CE(logits / tau_mem, i), by SGD ascent on W

Authors' code (training/train.py): 128-d head Linear-ReLU-Linear, tau 0.12, tau_mem 0.02, K 65536 negatives
initialised from encoded images, memory lr 3 with momentum 0.9 and weight decay 1e-4; encoder SGD
lr 0.03 x B/256, weight decay 1e-4, cosine; m 0.999; asymmetric loss (``--sym 0``).
Short run: batch 128; K as MoCo's queue (a quarter of the data at most), m 0.99 as in ``moco.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import Recipe, Reference, Run, copy_frozen, ema_update, grouped_forward, shuffled_bn_forward
from .moco import MOMENTUM, queue_size

RECIPE = Recipe("sgd", lr=0.03, weight_decay=1e-4, batch_size=128)
TAU, TAU_MEMORY = 0.12, 0.02


def adversarial_contrast(q, k, negatives, temperature: float):
    """CE over [the batch's keys, the negatives], the positive of query i being key i."""
    logits = torch.cat([q @ k.T, q @ negatives.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.arange(len(q)))


class AdCo(Reference):
    def __init__(self, backbone, run: Run):
        super().__init__(backbone, run)
        d = run.feature_dim
        self.f_q = nn.Sequential(backbone, nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 128))
        self.f_k = copy_frozen(self.f_q)
        self.negatives = nn.Parameter(torch.randn(queue_size(run), 128))
        self.memory_optimizer = torch.optim.SGD([self.negatives], lr=3.0, momentum=0.9, weight_decay=1e-4,
                                                maximize=True)  # gradient ascent

    def param_groups(self):
        return [{"params": [p for p in self.f_q.parameters()]}]

    def before_epoch(self, epoch, images, views):
        if epoch == 0:  # the negatives start as encoded images (authors' --ad_init 1)
            chosen = torch.randperm(len(images))[: len(self.negatives)]
            with torch.no_grad():
                self.negatives.copy_(F.normalize(self.f_k(views(images[chosen])), dim=1))

    def loss(self, views, indices, labels):
        q = F.normalize(grouped_forward(self.f_q, views[0]), dim=1)
        with torch.no_grad():
            k = F.normalize(shuffled_bn_forward(self.f_k, views[1]), dim=1)
        self.pair = (q.detach(), k)
        return adversarial_contrast(q, k, F.normalize(self.negatives.detach(), dim=1), TAU)

    def after_step(self, progress):
        q, k = self.pair
        self.memory_optimizer.zero_grad()
        adversarial_contrast(q, k, F.normalize(self.negatives, dim=1), TAU_MEMORY).backward()
        self.memory_optimizer.step()
        ema_update(self.f_k, self.f_q, MOMENTUM)
