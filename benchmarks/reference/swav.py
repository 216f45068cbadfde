"""SwAV (Caron, Misra, Mairal, Goyal, Bojanowski & Joulin, NeurIPS 2020), Algorithm 1.

    z = normalise(proj(f(x))) for two views; scores = z C (C: K normalised prototypes, D x K)
    q = Sinkhorn(exp(scores / eps)): 3 iterations, equal mass per prototype, sum 1 per sample (no grad)
    L = -1/2 sum_{s != t} q_s . log softmax(scores_t / tau)            (swapped prediction)

Paper / authors' code: projector Linear-BN-ReLU-Linear, 2048 hidden, 128 out; 3000 prototypes,
frozen for the first epoch (313 steps); eps 0.05, tau 0.1; LARS lr 4.8 at batch 4096, weight decay
1e-6, warm-up, cosine to 0.0048.
Short run: batch 128, lr 4.8 kept (``common.Recipe``), warm-up 10 %; K = N // 10 prototypes (125 for
1,257 images; 3000 would leave each prototype with less than one image); two views, no
multi-crop (at 8-32 px the small crops hold almost nothing) and no queue (the paper starts it only
after 15 epochs when the batch is small); hidden width max(512, 2048 x D / 2048).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import Recipe, Reference, Run, head_width, mlp

RECIPE = Recipe("lars", lr=4.8, lr_batch=4096, scaling="none", weight_decay=1e-6, batch_size=128, warmup=0.1)
EPSILON, TAU, SINKHORN_ITERATIONS = 0.05, 0.1, 3


@torch.no_grad()
def sinkhorn(scores):
    """Codes [B, K] whose prototypes share the batch equally and whose rows sum to 1."""
    q = torch.exp(scores / EPSILON).T  # K x B
    q /= q.sum()
    k, b = q.shape
    for _ in range(SINKHORN_ITERATIONS):
        q /= q.sum(dim=1, keepdim=True) * k
        q /= q.sum(dim=0, keepdim=True) * b
    return (q * b).T


class SwAV(Reference):
    def __init__(self, backbone, run: Run):
        super().__init__(backbone, run)
        self.projector = mlp([run.feature_dim, head_width(2048, run.feature_dim), 128])
        self.prototypes = nn.Parameter(torch.randn(min(3000, run.num_samples // 10), 128))
        self.steps = 0

    def loss(self, views, indices, labels):
        with torch.no_grad():
            self.prototypes.copy_(F.normalize(self.prototypes, dim=1))
        frozen = self.steps < self.run.steps_per_epoch  # no prototype update during the first epoch
        prototypes = self.prototypes.detach() if frozen else self.prototypes
        scores = [F.normalize(self.projector(self.backbone(v)), dim=1) @ prototypes.T for v in views]
        codes = [sinkhorn(s.detach()) for s in scores]
        log_p = [F.log_softmax(s / TAU, dim=1) for s in scores]
        return -((codes[0] * log_p[1]).sum(1).mean() + (codes[1] * log_p[0]).sum(1).mean()) / 2

    def after_step(self, progress):
        self.steps += 1
