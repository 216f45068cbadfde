"""W-MSE (Ermolov et al. 2021): MSE between whitened, L2-normalised embeddings of positive pairs.

    h_k = f(x_k) for each view k,  z = g([h_1; h_2])          encoder, 2-layer MLP head
    for each of w_iter random splits into sub-batches of w_size:
        v_k = Whiten(z_k) per view and sub-batch              Cholesky of the sub-batch covariance
    L = mean over splits and pairs of ||v_1/|v_1| - v_2/|v_2|||^2

Whitening makes the embeddings' covariance the identity, so they cannot collapse; no negatives,
no predictor, no momentum encoder. The batch (per process) must be a multiple of ``loss.w_size``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.losses import wmse
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.nn.heads import mlp


class WMSE(Method):
    name = "wmse"
    family = "infomax"
    prevents_collapse = "whitening of the batch (Cholesky) before the MSE"
    paper = "Whitening for Self-Supervised Representation Learning (Ermolov et al., ICML)"
    year = 2021

    def __init__(self, encoder, cfg: dict, info: RunInfo):
        super().__init__(encoder, cfg, info)
        head = cfg["head"]
        self.projector = mlp(info.feature_dim, head["proj_hidden_dim"], head["proj_out_dim"], num_layers=2)

    def forward(self, views: list[Tensor], labels: Tensor | None = None, indices: Tensor | None = None) -> StepOutput:
        h1, h2 = self.encoder(views[0]), self.encoder(views[1])
        z1, z2 = self.projector(torch.cat([h1, h2])).chunk(2)
        loss = wmse(z1, z2, **self.cfg["loss"])
        return StepOutput(loss=loss, features=h1, embeddings=(z1, z2))
