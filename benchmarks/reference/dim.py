"""Deep InfoMax, local objective (Hjelm et al., ICLR 2019, Eq. 4-5 and 8).

    M = C(x): local feature map [C, h, w] from the middle of the trunk (the authors' rdevon/DIM takes it
        after two of its three conv stages, cortex_DIM/configs/convnets.py local_task_idx);
    Y = E(x) = pool(f(M)): the global representation [D], the trunk's last stages f on top of M
    T(M_ij, Y) = phi(M_ij) . psi(Y)                         ("encode-and-dot-product" critic)
    I_JSD = E_P[-softplus(-T(M_ij, Y))] - E_N[softplus(T(M_ij, Y'))],  Y' of another image
    L = -mean_ij I_JSD                 (positives: own image; negatives: the other images of the batch)

Paper: local DIM (alpha 0, beta 1) with 1x1-conv phi and an MLP psi, 2048 units; Adam lr 1e-4,
batch 64; the prior-matching term (gamma) is left out here (it regularises the code's
distribution, not what kNN reads). Short run: batch 128; one augmented view; critic width
max(512, 2048 x D / 2048); Adam's default lr 1e-3, as the library's recipe gives a short Adam run (the
authors' 1e-4 moves a weight by at most 0.02 in 380 steps). On digits, 20 epochs, seed 0, kNN@200: 0.854
at 1e-4 (the untrained convnet: 0.869), 0.802 at 3e-4, 0.694 at 1e-3: the further it trains, the lower.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import Recipe, Reference, Run, head_width, mlp

LOCAL_STAGE = 2  # of the four stages: 8x8 at 32 px, the size of the authors' local map

RECIPE = Recipe("adam", lr=1e-3, scaling="none", weight_decay=0.0, batch_size=128)


def jsd_loss(scores):
    """scores [B, B, L]: image b's local features against image b''s global vector."""
    b = len(scores)
    positive = torch.eye(b, dtype=torch.bool)
    return F.softplus(-scores[positive]).mean() + F.softplus(scores[~positive]).mean()


@torch.no_grad()
def local_channels(backbone, run: Run) -> int:
    """Channels of the backbone's stage-2 map (one eval-mode pass, BN statistics untouched)."""
    backbone.eval()
    channels = backbone.feature_maps(torch.zeros(1, run.channels, run.image_size, run.image_size))[LOCAL_STAGE].shape[1]
    backbone.train()
    return channels


class DeepInfoMax(Reference):
    num_views = 1

    def __init__(self, backbone, run: Run):
        super().__init__(backbone, run)
        width = head_width(2048, run.feature_dim)
        channels = local_channels(backbone, run)
        self.local_critic = nn.Sequential(nn.Conv2d(channels, width, 1), nn.ReLU(), nn.Conv2d(width, width, 1))
        self.global_critic = mlp([run.feature_dim, width, width], hidden_bn=False)

    def loss(self, views, indices, labels):
        maps = self.backbone.feature_maps(views[0])
        local = maps[LOCAL_STAGE]
        y = self.backbone.pool(maps[-1]).flatten(1)  # the backbone's own representation
        phi = self.local_critic(local).flatten(2)  # B x W x L
        psi = self.global_critic(y)  # B x W
        return jsd_loss(torch.einsum("awl,bw->abl", phi, psi))
