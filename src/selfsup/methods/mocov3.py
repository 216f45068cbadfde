"""MoCo v3 (Chen, Xie & He 2021): symmetric InfoNCE between a predictor and a momentum encoder, no queue.

    q_k = h(g(f(x_k)))                                      online encoder, projector, predictor
    k_k = g'(f'(x_k))                                       momentum encoder and projector (no gradient)
    L = ctr(q_1, k_2) + ctr(q_2, k_1),  ctr(q, k) = 2 tau InfoNCE(q, k; tau)
                                                            keys of the whole (gathered) batch are the negatives
    theta' <- m theta' + (1 - m) theta,  m = 1 - (1 - m_0)(cos(pi k / K) + 1) / 2

MLPs as in the authors' code (facebookresearch/moco-v3 moco/builder.py ``_build_mlp``, also solo-learn's
solo/methods/mocov3.py): Linear layers without bias, BN + ReLU after each hidden layer; the projector ends in
BatchNorm without affine and has 2 layers for a ResNet, 3 for a ViT (``head.proj_layers``); the 2-layer
predictor ends in BatchNorm without affine for a ViT only (``MoCo_ViT``), in its last Linear for a ResNet
(``MoCo_ResNet``: ``_build_mlp(2, dim, mlp_dim, dim, False)``) (``head.pred_last_bn``). Null picks by backbone.
With a ViT, ``backbone.frozen_patch_embed`` keeps the random patch projection fixed (Sec. 5.1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.losses import info_nce
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.nn.heads import mlp
from selfsup.nn.momentum import cosine_momentum, ema_update, momentum_copy
from selfsup.nn.vit import VisionTransformer


class MoCoV3(Method):
    name = "mocov3"
    family = "contrastive"
    prevents_collapse = "in-batch negatives, momentum encoder, predictor"
    paper = "An Empirical Study of Training Self-Supervised Vision Transformers (Chen, Xie & He, ICCV)"
    year = 2021

    def __init__(self, encoder, cfg: dict, info: RunInfo):
        super().__init__(encoder, cfg, info)
        head = cfg["head"]
        hidden, out = head["proj_hidden_dim"], head["proj_out_dim"]
        vit = isinstance(encoder, VisionTransformer)
        layers = head.get("proj_layers") or (3 if vit else 2)
        pred_last_bn = head.get("pred_last_bn")
        pred_last_bn = vit if pred_last_bn is None else pred_last_bn
        self.projector = mlp(info.feature_dim, hidden, out, num_layers=layers, last_batch_norm=True)
        self.predictor = mlp(
            out, head["pred_hidden_dim"], out, num_layers=2, last_batch_norm=pred_last_bn, last_bias=False
        )
        self.momentum_encoder = momentum_copy(encoder)
        self.momentum_projector = momentum_copy(self.projector)
        self.momentum = head["momentum_base"]

    def forward(self, views: list[Tensor], labels: Tensor | None = None, indices: Tensor | None = None) -> StepOutput:
        x1, x2 = views[0], views[1]
        h1, h2 = self.encoder(x1), self.encoder(x2)
        z1, z2 = self.projector(h1), self.projector(h2)
        q1, q2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            k1 = self.momentum_projector(self.momentum_encoder(x1))
            k2 = self.momentum_projector(self.momentum_encoder(x2))
        tau = self.cfg["loss"]["temperature"]
        loss = 2 * tau * (
            info_nce(q1, k2, temperature=tau, gather=True) + info_nce(q2, k1, temperature=tau, gather=True)
        )
        return StepOutput(loss=loss, metrics={"momentum": self.momentum}, features=h1, embeddings=(z1, z2))

    def runtime_state(self) -> dict:
        return {"momentum": self.momentum}  # logged by the next step

    def load_runtime_state(self, state: dict) -> None:
        self.momentum = state["momentum"]

    def on_step_end(self, step: int, total_steps: int) -> None:
        head = self.cfg["head"]
        self.momentum = cosine_momentum(head["momentum_base"], head["momentum_final"], step + 1, total_steps)
        ema_update(self.momentum_encoder, self.encoder, self.momentum)
        ema_update(self.momentum_projector, self.projector, self.momentum)
