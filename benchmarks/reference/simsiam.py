"""SimSiam (Chen & He, CVPR 2021), Algorithm 1.

    z = h(f(x)) projector, p = pred(z) predictor, D(p, z) = -cos(p, stopgrad(z))
    L = D(p1, z2) / 2 + D(p2, z1) / 2

Paper (CIFAR-10, App. D): projector of 2 layers (Linear-BN-ReLU-Linear-BN), 2048-d; predictor
Linear-BN-ReLU-Linear with a 512 bottleneck; SGD lr 0.03 x B/256, momentum 0.9, weight decay 5e-4,
cosine, no warm-up; the predictor keeps its initial lr (authors' --fix-pred-lr).
Short run: batch 128 (lr 0.015); projector width max(512, 2048 x D / 2048), bottleneck a quarter.
"""

from __future__ import annotations

import torch.nn.functional as F

from .common import Recipe, Reference, Run, head_width, mlp

RECIPE = Recipe("sgd", lr=0.03, weight_decay=5e-4, batch_size=128)


def negative_cosine(p, z):
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


class SimSiam(Reference):
    def __init__(self, backbone, run: Run):
        super().__init__(backbone, run)
        dim = head_width(2048, run.feature_dim)
        self.projector = mlp([run.feature_dim, dim, dim], last_bn=True)
        self.predictor = mlp([dim, dim // 4, dim])

    def param_groups(self):
        return [{"params": list(self.backbone.parameters()) + list(self.projector.parameters())},
                {"params": list(self.predictor.parameters()), "fixed_lr": True}]

    def loss(self, views, indices, labels):
        z1, z2 = (self.projector(self.backbone(v)) for v in views)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2
