"""MoCo v1 (He, Fan, Wu, Xie & Girshick, CVPR 2020), Algorithm 1, and MoCo v2 (Chen, Fan, Girshick
& He, 2020).

    q = f_q(x_q), k = sg(f_k(x_k)), both L2-normalised; queue of K earlier keys as negatives
    L = -log exp(q.k / tau) / (exp(q.k / tau) + sum_{n in queue} exp(q.n / tau))
    f_k <- m f_k + (1 - m) f_q;  enqueue k, dequeue the oldest batch

Paper: a 128-d head (v1: linear; v2: Linear-ReLU-Linear), tau 0.07 (v1) / 0.2 (v2), K 65536,
m 0.999; SGD lr 0.03 x B/256, momentum 0.9, weight decay 1e-4 (v2: cosine schedule). Shuffle BN:
the key batch is shuffled across GPUs; on one device its BN runs in groups of 32 shuffled images
(the authors' CIFAR demo splits BN into 8 groups), ``common.shuffled_bn_forward``.
Short run: batch 128; the queue holds a quarter of the data at most (K = B x max(1, N // 4B): 256
keys for 1,257 images, so no image meets its own stale keys); m 0.99 as the authors' CIFAR demo
(slow is right for MoCo, paper Sec. 4.1; on digits, 20 epochs, kNN@200 over seeds 0-1,
m 0.89 (5 %-of-the-run lag) 0.91-0.93, 0.99 0.94-0.96, 0.999 0.93); cosine schedule for both versions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import Recipe, Reference, Run, copy_frozen, ema_update, grouped_forward, shuffled_bn_forward

RECIPE = Recipe("sgd", lr=0.03, weight_decay=1e-4, batch_size=128)
MOMENTUM = 0.99


def queue_size(run: Run) -> int:
    return run.batch_size * max(1, run.num_samples // (4 * run.batch_size))


def info_nce(q, k, negatives, temperature: float):
    """Cross-entropy with the positive key in column 0 (Algorithm 1's logits)."""
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ negatives.T], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long))


class MoCoV2(Reference):
    temperature = 0.2
    mlp_head = True

    def __init__(self, backbone, run: Run):
        super().__init__(backbone, run)
        d = run.feature_dim
        head = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, 128)) if self.mlp_head else nn.Linear(d, 128)
        self.f_q = nn.Sequential(backbone, head)
        self.f_k = copy_frozen(self.f_q)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size(run), 128), dim=1))
        self.pointer = 0

    def loss(self, views, indices, labels):
        q = F.normalize(grouped_forward(self.f_q, views[0]), dim=1)
        with torch.no_grad():
            k = F.normalize(shuffled_bn_forward(self.f_k, views[1]), dim=1)
        self.keys = k
        return info_nce(q, k, self.queue.clone(), self.temperature)

    def after_step(self, progress):
        ema_update(self.f_k, self.f_q, MOMENTUM)
        n = len(self.keys)
        self.queue[self.pointer : self.pointer + n] = self.keys
        self.pointer = (self.pointer + n) % len(self.queue)


class MoCoV1(MoCoV2):
    temperature = 0.07
    mlp_head = False
