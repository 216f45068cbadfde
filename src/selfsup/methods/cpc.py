"""Contrastive Predictive Coding (van den Oord, Li & Vinyals 2018): predict future latents.

Sequences (Sec. 3.1, audio):
    z_t = g_enc(x)_t                      strided 1-D conv encoder, one latent per step
    c_t = g_ar(z_<=t)                     GRU context of the past
Images (Sec. 3.2):
    z_ij = g_enc(patch_ij)                the backbone on each patch of an overlapping grid
    c_ij = g_ar(z_i'j', i' <= i)          convolutions that see only the rows above (PixelCNN-style)
Both:
    f_k(z, c_t) = exp(z^T W_k c_t)        one linear predictor W_k per step (row) ahead, k = 1..K
    L = 1/K sum_k InfoNCE(W_k c_t -> z_{t+k}; negatives: the latents of the other samples and steps)

For sequences the representation kept is the encoder's pooled context (``conv_gru``'s ``pool``;
the encoder provides ``latents``, ``contexts`` and ``pool_contexts``). For images the method's
encoder becomes a ``PatchGrid`` around the backbone, whose representation is the mean of the
patch latents, as the paper's linear evaluation on ImageNet (Sec. 3.2) pools them.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.losses import cpc
from selfsup.methods.base import Method, RunInfo, StepOutput


class PatchGrid(nn.Module):
    """Image [B, C, H, W] -> latents of overlapping ``patch`` x ``patch`` crops every ``stride`` pixels."""

    def __init__(self, backbone: nn.Module, patch: int, stride: int):
        super().__init__()
        self.backbone, self.patch, self.stride = backbone, patch, stride
        self.out_dim = backbone.out_dim

    def grid(self, x: Tensor) -> Tensor:
        """[B, rows, cols, D]."""
        patches = x.unfold(2, self.patch, self.stride).unfold(3, self.patch, self.stride)  # B, C, r, c, p, p
        b, ch, rows, cols = patches.shape[:4]
        flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(b * rows * cols, ch, self.patch, self.patch)
        return self.backbone(flat).view(b, rows, cols, -1)

    def forward(self, x: Tensor) -> Tensor:
        return self.grid(x).mean(dim=(1, 2))


class RowCausalContext(nn.Module):
    """c_ij from the latents of rows <= i: k x k convolutions padded only at the top."""

    def __init__(self, dim: int, layers: int = 2, kernel: int = 3):
        super().__init__()
        self.kernel = kernel
        self.convs = nn.ModuleList(nn.Conv2d(dim, dim, kernel) for _ in range(layers))

    def forward(self, z: Tensor) -> Tensor:
        """[B, rows, cols, D] -> [B, rows, cols, D]."""
        h = z.permute(0, 3, 1, 2)
        pad = (self.kernel // 2, self.kernel // 2, self.kernel - 1, 0)  # left, right, top, bottom
        for conv in self.convs:
            h = F.relu(conv(F.pad(h, pad)))
        return h.permute(0, 2, 3, 1)


class CPC(Method):
    name = "cpc"
    family = "contrastive"
    prevents_collapse = "predicting future latents against other samples' latents (InfoNCE)"
    paper = "Representation Learning with Contrastive Predictive Coding (van den Oord, Li, Vinyals, arXiv)"
    year = 2018
    data_kind = "any"

    def __init__(self, encoder: nn.Module, cfg: dict, info: RunInfo):
        super().__init__(encoder, cfg, info)
        head = cfg["head"]
        steps = int(head["prediction_steps"])
        if not hasattr(encoder, "latents"):
            if head.get("patch_size") is None or head.get("patch_stride") is None:
                raise ValueError("cpc on images needs head.patch_size and head.patch_stride; on sequences use --backbone conv_gru")
            self.encoder = PatchGrid(encoder, int(head["patch_size"]), int(head["patch_stride"]))
            self.context = RowCausalContext(info.feature_dim, int(head.get("context_layers", 2)))
            latent_dim = context_dim = info.feature_dim
            latent_steps = (info.input_size - self.encoder.patch) // self.encoder.stride + 1
        else:
            latent_dim, context_dim = encoder.latent_dim, encoder.context_dim
            window = min((cfg.get("views") or {}).get("crop_length") or info.input_size, info.input_size)
            latent_steps = window // getattr(encoder, "downsampling", 1)  # per training window (views.crop_length)
        if not 1 <= steps < latent_steps:
            raise ValueError(
                f"cpc predicts {steps} steps ahead but the encoder gives {latent_steps} latent steps (rows); "
                f"set head.prediction_steps below {latent_steps}, or use smaller strides"
            )
        self.predictors = nn.ModuleList(nn.Linear(context_dim, latent_dim, bias=False) for _ in range(steps))

    def _latents_and_contexts(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """z, c as [sequences, steps, dim] (image columns become sequences of rows) and the representation."""
        if isinstance(self.encoder, PatchGrid):
            z = self.encoder.grid(x)
            c = self.context(z)
            to_columns = lambda t: t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[-1])  # noqa: E731
            return to_columns(z), to_columns(c), z.mean(dim=(1, 2))
        z = self.encoder.latents(x)
        c = self.encoder.contexts(z)
        return z, c, self.encoder.pool_contexts(c)

    def forward(self, views: list[Tensor], labels: Tensor | None = None, indices: Tensor | None = None) -> StepOutput:
        z, c, features = self._latents_and_contexts(views[0])
        loss = cpc(c, z, self.predictors, gather=True)
        batch = len(features)
        one_step = (  # prediction vs target, averaged per sample, for the collapse monitors
            self.predictors[0](c[:, :-1]).reshape(batch, -1, z.shape[-1]).mean(1),
            z[:, 1:].reshape(batch, -1, z.shape[-1]).mean(1),
        )
        return StepOutput(loss=loss, features=features, embeddings=one_step)
