"""SimSiam (Chen & He 2021): a predictor and a stop-gradient, no negatives, no momentum encoder.

    z = g(f(x)), p = h(z)                              projector ends with BN; h is a bottleneck MLP
    L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2,  D(p, z) = -cos(p, z)
    the predictor h is trained with a fixed (unscheduled) learning rate (Sec. 4.4, Table 1)

Each view goes through encoder, projector and predictor on its own, as in the authors' code
(facebookresearch/simsiam simsiam/builder.py ``forward``): BatchNorm statistics are per view.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from selfsup.losses import negative_cosine
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.nn.heads import mlp


class SimSiam(Method):
    name = "simsiam"
    family = "distillation"
    prevents_collapse = "predictor + stop-gradient (fixed predictor lr)"
    paper = "Exploring Simple Siamese Representation Learning (Chen & He, CVPR)"
    year = 2021

    def __init__(self, encoder, cfg: dict, info: RunInfo):
        super().__init__(encoder, cfg, info)
        head = cfg["head"]
        dim = head["proj_out_dim"]
        self.projector = mlp(
            info.feature_dim, head["proj_hidden_dim"], dim, num_layers=head["proj_layers"], last_batch_norm=True
        )
        self.predictor = mlp(dim, head["pred_hidden_dim"], dim, num_layers=2)

    def forward(self, views: list[Tensor], labels: Tensor | None = None, indices: Tensor | None = None) -> StepOutput:
        x1, x2 = views[0], views[1]
        h1, h2 = self.encoder(x1), self.encoder(x2)
        z1, z2 = self.projector(h1), self.projector(h2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        loss = negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2
        return StepOutput(loss=loss, features=h1, embeddings=(z1, z2))

    def param_groups(self) -> list[dict[str, Any]]:
        """The default groups without the predictor, plus the predictor at a fixed learning rate.

        The paper fixes the predictor's lr at the initial lr, base_lr x B/256 (Sec. 4.1).
        """
        predictor = {id(p) for p in self.predictor.parameters()}
        groups = []
        for group in super().param_groups():
            params = [p for p in group["params"] if id(p) not in predictor]
            if params:
                groups.append({**group, "params": params})
        optim = self.cfg["optim"]
        scale = self.cfg["train"]["batch_size"] / 256 if optim.get("scale_lr", True) else 1.0
        predictor_group = {"params": list(self.predictor.parameters()), "name": "predictor", "fixed_lr": True}
        groups.append({**predictor_group, "lr": optim["lr"] * scale})
        return groups
