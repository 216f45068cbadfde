"""CPC on images (van den Oord, Li & Vinyals, 2018, Sec. 3.2).

    z_ij = f(patch_ij)                  the encoder on each patch of an overlapping grid
    c_ij = g_ar(z_{i'j'}, i' <= i)      a PixelCNN-style context: convolutions that see rows <= i only
    L = 1/K sum_{k=1..K} InfoNCE(W_k c_ij -> z_{i+k, j}),
        negatives: the latents of every other patch of the batch at that offset

Paper: 7x7 grid of patches overlapping by half (64 px every 32 px of a 256 px image), mean-pooled
latents as the representation, up to 5 rows predicted; Adam lr 2e-4.
Short run: the same 50 %-overlap geometry scaled to the image: patch max(4, S / 4) every half patch
(8 px every 4 at 32 px: 7x7; 4 px every 2 at 8 px: 3x3), K = min(5, rows - 1); batch 128; one
augmented view per image; the context is two 3x3 causal convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import Recipe, Reference, Run

RECIPE = Recipe("adam", lr=2e-4, scaling="none", weight_decay=0.0, batch_size=128)


class PatchGrid(nn.Module):
    """Image -> latents of its overlapping patches [B, rows, cols, D]; forward = their mean [B, D]."""

    def __init__(self, backbone: nn.Module, patch: int):
        super().__init__()
        self.backbone, self.patch, self.stride = backbone, patch, patch // 2

    def latents(self, x):
        p = x.unfold(2, self.patch, self.stride).unfold(3, self.patch, self.stride)  # B C r c p p
        b, c, rows, cols = p.shape[:4]
        z = self.backbone(p.permute(0, 2, 3, 1, 4, 5).reshape(-1, c, self.patch, self.patch))
        return z.view(b, rows, cols, -1)

    def forward(self, x):
        return self.latents(x).mean(dim=(1, 2))


class CausalRows(nn.Module):
    """3x3 convolutions padded with two rows on top only: c_ij depends on rows <= i."""

    def __init__(self, dim: int, layers: int = 2):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, 3) for _ in range(layers))

    def forward(self, z):  # [B, rows, cols, D]
        h = z.permute(0, 3, 1, 2)
        for conv in self.convs:
            h = F.relu(conv(F.pad(h, (1, 1, 2, 0))))
        return h.permute(0, 2, 3, 1)


class CPC(Reference):
    num_views = 1

    def __init__(self, backbone, run: Run):
        super().__init__(backbone, run)
        patch = max(4, run.image_size // 4)
        rows = (run.image_size - patch) // (patch // 2) + 1
        self.grid = PatchGrid(backbone, patch)
        self.context = CausalRows(run.feature_dim)
        self.predictors = nn.ModuleList(nn.Linear(run.feature_dim, run.feature_dim, bias=False)
                                        for _ in range(min(5, rows - 1)))

    def loss(self, views, indices, labels):
        z = self.grid.latents(views[0])
        c = self.context(z)
        losses = []
        for k, w_k in enumerate(self.predictors, start=1):
            prediction = w_k(c[:, :-k]).flatten(0, 2)
            target = z[:, k:].flatten(0, 2)
            losses.append(F.cross_entropy(prediction @ target.T, torch.arange(len(target))))
        return torch.stack(losses).mean()

    def encoder(self):
        return self.grid
