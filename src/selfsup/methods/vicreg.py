"""VICReg (Bardes, Ponce & LeCun 2022): variance-invariance-covariance regularisation.

    z_1 = g(f(x_1)), z_2 = g(f(x_2))                         encoder, 3-layer expander (no final bias)
    L = sim * MSE(z_1, z_2)                                  invariance
      + var * mean_j max(0, 1 - std(z_j))  (both views)      keeps every dimension spread out
      + cov * sum_{i != j} Cov(z)_ij^2 / d  (both views)     decorrelates dimensions
"""

from __future__ import annotations

from torch import Tensor

from selfsup.losses import vicreg
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.nn.heads import mlp


class VICReg(Method):
    name = "vicreg"
    family = "infomax"
    prevents_collapse = "variance hinge + covariance penalty"
    paper = "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised Learning (Bardes et al., ICLR)"
    year = 2022

    def __init__(self, encoder, cfg: dict, info: RunInfo):
        super().__init__(encoder, cfg, info)
        head = cfg["head"]
        self.expander = mlp(
            info.feature_dim, head["proj_hidden_dim"], head["proj_out_dim"], head["proj_layers"], last_bias=False
        )

    def forward(self, views: list[Tensor], labels: Tensor | None = None, indices: Tensor | None = None) -> StepOutput:
        h1, h2 = self.encoder(views[0]), self.encoder(views[1])
        z1, z2 = self.expander(h1), self.expander(h2)
        loss = vicreg(z1, z2, gather=True, **self.cfg["loss"])
        return StepOutput(loss=loss, features=h1, embeddings=(z1, z2))
