"""AdCo (Hu et al. 2021): the negatives are parameters, trained adversarially against the encoder.

    q = normalise(g_q(f_q(x_1))),  k = normalise(g_k(f_k(x_2)))     momentum key encoder as in MoCo v2
    L(q, k, N) = -log exp(q.k / t) / (exp(q.k / t) + sum_{n in N} exp(q.n / t))     N: [K, D], normalised
    encoder:    theta <- theta - lr * dL/dtheta                      (temperature t_pos)
    negatives:  N     <- N + lr_neg * dL/dN                          (temperature t_neg, ascent)

``selfsup.losses.adco`` returns a loss whose gradient w.r.t. the negatives is already
-dL(t_neg)/dN, so one ordinary optimizer step descends for the encoder and ascends for the
negatives, which have their own (constant) learning rate and no LARS. As in the authors'
code (``ad_init``), the negatives start as the first keys the encoder produces; until they
are all filled they are not trained. The authors' code also counts the other keys of the
(global) batch as negatives, and so does ``loss.batch_keys: true`` (the presets); false keeps
the paper's objective, whose only negatives are N.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import distributed
from selfsup.losses import adco
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.methods.moco import momentum_keys, needs_shuffled_bn, split_batchnorm
from selfsup.nn.heads import mlp
from selfsup.nn.momentum import ema_update, momentum_copy


class AdCo(Method):
    name = "adco"
    family = "contrastive"
    prevents_collapse = "negatives as parameters trained adversarially (gradient ascent)"
    paper = "AdCo: Adversarial Contrast for Efficient Learning of Unsupervised Representations from Self-Trained Negative Adversaries (Hu, Wang, Hu, Qi; CVPR)"
    year = 2021

    def __init__(self, encoder, cfg: dict, info: RunInfo):
        super().__init__(encoder, cfg, info)
        head = cfg["head"]
        split_batchnorm(self.encoder, cfg)  # shuffling BN as in MoCo, emulated in one process
        self.projector = mlp(
            info.feature_dim, head["proj_hidden_dim"], head["proj_out_dim"], num_layers=2, batch_norm=False
        )
        self.key_encoder = momentum_copy(self.encoder)
        self.key_projector = momentum_copy(self.projector)
        self.negatives = nn.Parameter(F.normalize(torch.randn(head["num_negatives"], head["proj_out_dim"]), dim=1))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))  # negatives set from keys so far
        self.momentum = head["momentum"]
        self.shuffle_bn = head.get("shuffle_bn", True)
        self._keys: Tensor | None = None
        self._shuffle: bool | None = None  # decided at the first step, once the trainer has set up DDP
        self._filled = 0  # ``filled`` as the host knows it, so no step reads the device
        self._filling = True  # ``filled < num_negatives``
        self.register_load_state_dict_post_hook(self._sync_filling)

    def forward(self, views: list[Tensor], labels: Tensor | None = None, indices: Tensor | None = None) -> StepOutput:
        h = self.encoder(views[0])
        q = F.normalize(self.projector(h), dim=1)
        k = self.keys(views[1])
        loss = adco(q, k, self.negatives, gather=True, **self.cfg["loss"])
        self._keys = k
        return StepOutput(loss=loss, features=h, embeddings=(q, k))

    def keys(self, x: Tensor) -> Tensor:
        """Keys of the momentum encoder, the batch shuffled across devices (ranks, or BN splits in one process)."""
        if self._shuffle is None:
            self._shuffle = self.shuffle_bn and needs_shuffled_bn(self.key_encoder)
        return momentum_keys(self.key_encoder, self.key_projector, x, self._shuffle)

    def on_after_backward(self, step: int) -> None:
        if self._filling:
            self.negatives.grad = None  # no optimizer update (nor weight decay) of keys being copied in

    def on_step_end(self, step: int, total_steps: int) -> None:
        ema_update(self.key_encoder, self.encoder, self.momentum)
        ema_update(self.key_projector, self.projector, self.momentum)
        if self._filling and self._keys is not None:
            self.fill_negatives(self._keys)
        self._keys = None

    @torch.no_grad()
    def fill_negatives(self, keys: Tensor) -> None:
        """Copy the next keys (gathered across ranks) into the negatives not yet initialised."""
        keys = distributed.gather_no_grad(keys)
        start = self._filled
        end = min(start + keys.shape[0], self.negatives.shape[0])
        self.negatives[start:end] = keys[: end - start].to(self.negatives.dtype)
        self.filled.fill_(end)
        self._filled, self._filling = end, end < self.negatives.shape[0]

    def param_groups(self) -> list[dict[str, Any]]:
        head = self.cfg["head"]
        groups = super().param_groups()
        for group in groups:
            group["params"] = [p for p in group["params"] if p is not self.negatives]
        negatives = {
            "params": [self.negatives],
            "name": "negatives",
            "lr": head["negatives_lr"],
            "weight_decay": head.get("negatives_weight_decay", 0.0),
            "fixed_lr": True,
            "lars_exclude": True,
        }
        return [g for g in groups if g["params"]] + [negatives]

    def _sync_filling(self, module: nn.Module, incompatible_keys: Any) -> None:
        self._filled = int(self.filled)
        self._filling = self._filled < self.negatives.shape[0]
