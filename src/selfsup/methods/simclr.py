"""SimCLR (Chen et al. 2020): two augmented views, an MLP projector, NT-Xent over the batch.

    h_i = f(x_i), z_i = g(h_i)                      encoder, projector
    L = NT-Xent(z_1, z_2; tau)                      2N anchors, 2N-2 negatives each

The projector is the authors' (google-research/simclr model_util.py ``projection_head``, nonlinear):
``head.proj_layers`` Linear layers, hidden width the encoder's feature dim (``proj_hidden_dim`` null),
each followed by BatchNorm; hidden layers: no bias, BN with scale and centre, ReLU; the output layer:
no bias, BN with a scale but no centre (``center=False``), no ReLU. The first release (the v1 paper)
has 2 layers (``num_nlh_layers=1``), the current one (SimCLR v2 code) 3 (``num_proj_layers=3``).
Both views go through the encoder as one batch, as the authors' code concatenates them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.losses import nt_xent
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.nn.heads import mlp


class SimCLR(Method):
    name = "simclr"
    family = "contrastive"
    prevents_collapse = "other images of the batch as negatives (NT-Xent)"
    paper = "A Simple Framework for Contrastive Learning of Visual Representations (Chen et al., ICML)"
    year = 2020

    def __init__(self, encoder, cfg: dict, info: RunInfo):
        super().__init__(encoder, cfg, info)
        head = cfg["head"]
        self.projector = mlp(
            info.feature_dim, head.get("proj_hidden_dim") or info.feature_dim, head["proj_out_dim"],
            num_layers=head.get("proj_layers", 2), last_batch_norm=True, last_bn_scale=True,
        )

    def forward(self, views: list[Tensor], labels: Tensor | None = None, indices: Tensor | None = None) -> StepOutput:
        x1, x2 = views[0], views[1]
        h = self.encoder(torch.cat([x1, x2]))
        z1, z2 = self.projector(h).chunk(2)
        loss = nt_xent(z1, z2, gather=True, **self.cfg["loss"])
        return StepOutput(loss=loss, features=h[: x1.shape[0]], embeddings=(z1, z2))

