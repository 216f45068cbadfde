"""SimCLR (Chen, Kornblith, Norouzi & Hinton, ICML 2020), Algorithm 1.

    h = f(x~), z = g(h) for two views of each image; s_ij = z_i . z_j / (|z_i| |z_j|)
    l(i, j) = -log exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau)
    L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]                                  (NT-Xent)

Paper / authors' code: projector g = 2-layer MLP with BN on every layer (the output too), 128-d;
LARS, lr 4.8 at batch 4096 (= 0.075 sqrt(B), App. B.1), weight decay 1e-6, 10 warm-up epochs of
100, cosine. The authors' CIFAR-10 command (google-research/simclr README) uses temperature 0.5,
jitter strength 0.5 and no blur, as here, with LARS lr 1.0 x B/256 and weight decay 1e-4.
Short run (see ``common.Recipe``): batch 128, the paper's LARS lr 4.8 kept; warm-up 10 % of the
run; hidden width max(512, 2048 x D / 2048) for a D-dimensional representation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import Recipe, Reference, Run, head_width, mlp

RECIPE = Recipe("lars", lr=4.8, lr_batch=4096, scaling="none", weight_decay=1e-6, batch_size=128, warmup=0.1)


def nt_xent(z1: Tensor, z2: Tensor, temperature: float) -> Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))  # k != i
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, positives)


class SimCLR(Reference):
    temperature = 0.5

    def __init__(self, backbone, run: Run):
        super().__init__(backbone, run)
        self.projector = mlp([run.feature_dim, head_width(2048, run.feature_dim), 128], last_bn=True)

    def loss(self, views, indices, labels):
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        return nt_xent(z1, z2, self.temperature)
