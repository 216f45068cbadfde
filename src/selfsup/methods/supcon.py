"""Supervised contrastive learning (Khosla et al. 2020): all views of the same class are positives.

    z_{i,v} = normalise(g(f(x_{i,v})))                    V views of each of the B images
    L = sum_anchors -1/|P(a)| sum_{p in P(a)} log exp(z_a.z_p / tau) / sum_{n != a} exp(z_a.z_n / tau)

P(a): the other views of the anchor's image and all views of images with the anchor's label
(the loss 'L_out' of Eq. 2). Without labels this reduces to SimCLR.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.losses import supcon
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.nn.heads import mlp


class SupCon(Method):
    name = "supcon"
    family = "contrastive"
    prevents_collapse = "negatives of other classes (uses labels)"
    paper = "Supervised Contrastive Learning (Khosla, Teterwak, Wang, Sarna, Tian, Isola, Maschinot, Liu, Krishnan; NeurIPS)"
    year = 2020
    needs_labels = True

    def __init__(self, encoder, cfg: dict, info: RunInfo):
        super().__init__(encoder, cfg, info)
        head = cfg["head"]
        self.projector = mlp(
            info.feature_dim, head["proj_hidden_dim"], head["proj_out_dim"], num_layers=2, batch_norm=False
        )

    def forward(self, views: list[Tensor], labels: Tensor | None = None, indices: Tensor | None = None) -> StepOutput:
        if labels is None:
            raise ValueError("supcon needs the batch labels: train it on a labelled dataset (forward(views, labels=...))")
        batch = views[0].shape[0]
        h = self.encoder(torch.cat(views[:2]))
        z = F.normalize(self.projector(h), dim=1)
        z1, z2 = z.chunk(2)
        loss = supcon(torch.stack([z1, z2], dim=1), labels, gather=True, **self.cfg["loss"])
        return StepOutput(loss=loss, features=h[:batch], embeddings=(z1, z2))
