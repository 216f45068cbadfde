"""Barlow Twins (Zbontar et al. 2021): the cross-correlation of two views' embeddings -> the identity.

    z_1 = g(f(x_1)), z_2 = g(f(x_2))                        encoder, 3-layer projector (no final bias)
    C = BN(z_1)^T BN(z_2) / N                                over the whole (gathered) batch
    L = sum_i (1 - C_ii)^2 + lambda sum_{i != j} C_ij^2      invariance + redundancy reduction

The paper trains biases and BN parameters with their own learning rate (0.0048 vs 0.2 per 256);
``optim.bias_lr`` sets it.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from selfsup.losses import barlow_twins
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.nn.heads import mlp


class BarlowTwins(Method):
    name = "barlow_twins"
    family = "infomax"
    prevents_collapse = "cross-correlation of the two views pushed to the identity"
    paper = "Barlow Twins: Self-Supervised Learning via Redundancy Reduction (Zbontar et al., ICML)"
    year = 2021

    def __init__(self, encoder, cfg: dict, info: RunInfo):
        super().__init__(encoder, cfg, info)
        head = cfg["head"]
        self.projector = mlp(
            info.feature_dim, head["proj_hidden_dim"], head["proj_out_dim"], head["proj_layers"], last_bias=False
        )

    def forward(self, views: list[Tensor], labels: Tensor | None = None, indices: Tensor | None = None) -> StepOutput:
        h1, h2 = self.encoder(views[0]), self.encoder(views[1])
        z1, z2 = self.projector(h1), self.projector(h2)
        loss = barlow_twins(z1, z2, gather=True, **self.cfg["loss"])
        return StepOutput(loss=loss, features=h1, embeddings=(z1, z2))

    def param_groups(self) -> list[dict[str, Any]]:
        groups = super().param_groups()
        bias_lr = self.cfg.get("optim", {}).get("bias_lr")
        for group in groups:
            if group["name"] == "bias_norm" and bias_lr is not None:
                group["lr"] = bias_lr
        return groups
