"""Contrastive Predictive Coding (van den Oord, Li & Vinyals 2018) for sequences.

    z_t = g_enc(x)_t                      strided 1-D conv encoder, one latent per step
    c_t = g_ar(z_<=t)                     GRU context of the past
    f_k(z, c_t) = exp(z^T W_k c_t)        one linear predictor W_k per step ahead, k = 1..K
    L = 1/K sum_k InfoNCE(W_k c_t -> z_{t+k}; negatives: the latents of the other samples and steps)

The representation kept for downstream tasks is the encoder's pooled context (``conv_gru``'s
``pool``). The encoder must provide ``latents(x)``, ``contexts(z)`` and ``pool_contexts(c)``
(``selfsup.nn.sequence.ConvGRU`` does).
"""

from __future__ import annotations

from torch import Tensor, nn

from selfsup.losses import cpc
from selfsup.methods.base import Method, RunInfo, StepOutput


class CPC(Method):
    name = "cpc"
    family = "contrastive"
    paper = "Representation Learning with Contrastive Predictive Coding (van den Oord, Li, Vinyals, arXiv)"
    year = 2018
    data_kind = "sequence"

    def __init__(self, encoder: nn.Module, cfg: dict, info: RunInfo):
        super().__init__(encoder, cfg, info)
        missing = [m for m in ("latents", "contexts", "pool_contexts") if not hasattr(encoder, m)]
        if missing:
            raise ValueError(f"cpc needs a sequence encoder with {', '.join(missing)}; use --backbone conv_gru")
        steps = int(cfg["head"]["prediction_steps"])
        latent_steps = info.input_size // getattr(encoder, "downsampling", 1)
        if not 1 <= steps < latent_steps:
            raise ValueError(
                f"cpc predicts {steps} steps ahead but the encoder gives {latent_steps} latent steps; "
                f"set head.prediction_steps below {latent_steps} or use smaller backbone.strides"
            )
        self.predictors = nn.ModuleList(
            nn.Linear(encoder.context_dim, encoder.latent_dim, bias=False) for _ in range(steps)
        )

    def forward(self, views: list[Tensor], labels: Tensor | None = None, indices: Tensor | None = None) -> StepOutput:
        z = self.encoder.latents(views[0])
        c = self.encoder.contexts(z)
        loss = cpc(c, z, self.predictors, gather=True)
        one_step = (self.predictors[0](c[:, :-1]).mean(1), z[:, 1:].mean(1))  # prediction vs target, per sample
        return StepOutput(loss=loss, features=self.encoder.pool_contexts(c), embeddings=one_step)
