"""BYOL (Grill et al. 2020): an online network predicts an EMA target network's projection.

    z = g(f(x)), p = q(z)                             online encoder, projector, predictor
    z' = g'(f'(x))                                    target: EMA of the online encoder and projector
    L = ||p1/|p1| - sg(z2')/|z2'|||^2 + (1 <-> 2)     = 2 - 2 cos, both directions
    theta' <- tau theta' + (1 - tau) theta,  tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2

Each view goes through the online and the target networks on its own, as in the authors' code
(deepmind-research byol/byol_experiment.py ``apply_once_fn`` per view): every BatchNorm normalises
one view's batch, never the two views together.
"""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.losses import negative_cosine
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.nn.heads import mlp
from selfsup.nn.momentum import cosine_momentum, ema_update, momentum_copy


class BYOL(Method):
    name = "byol"
    family = "distillation"
    prevents_collapse = "predictor + EMA target (momentum 0.996 -> 1, cosine)"
    paper = "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning (Grill et al., NeurIPS)"
    year = 2020

    def __init__(self, encoder, cfg: dict, info: RunInfo):
        super().__init__(encoder, cfg, info)
        head = cfg["head"]
        self.projector = mlp(info.feature_dim, head["proj_hidden_dim"], head["proj_out_dim"], num_layers=2)
        self.predictor = mlp(head["proj_out_dim"], head["pred_hidden_dim"], head["proj_out_dim"], num_layers=2)
        self.target_encoder = momentum_copy(encoder)
        self.target_projector = momentum_copy(self.projector)
        self.momentum = head["momentum_base"]

    def forward(self, views: list[Tensor], labels: Tensor | None = None, indices: Tensor | None = None) -> StepOutput:
        x1, x2 = views[0], views[1]
        h1, h2 = self.encoder(x1), self.encoder(x2)
        z1, z2 = self.projector(h1), self.projector(h2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        with torch.no_grad():
            t1 = self.target_projector(self.target_encoder(x1))
            t2 = self.target_projector(self.target_encoder(x2))
        loss = (2 + 2 * negative_cosine(p1, t2)) + (2 + 2 * negative_cosine(p2, t1))
        metrics = {"momentum": self.momentum}
        return StepOutput(loss=loss, metrics=metrics, features=h1, embeddings=(z1, z2))

    def runtime_state(self) -> dict:
        return {"momentum": self.momentum}  # logged by the next step

    def load_runtime_state(self, state: dict) -> None:
        self.momentum = state["momentum"]

    def on_step_end(self, step: int, total_steps: int) -> None:
        head = self.cfg["head"]
        self.momentum = cosine_momentum(head["momentum_base"], head["momentum_final"], step, total_steps)
        ema_update(self.target_encoder, self.encoder, self.momentum)
        ema_update(self.target_projector, self.projector, self.momentum)
