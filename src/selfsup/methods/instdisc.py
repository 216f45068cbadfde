"""Instance discrimination (Wu et al. 2018): every image is its own class, scored against a memory bank.

    v = normalise(W f(x))                                       128-d embedding of the image i
    P(i | v) = exp(v_i . v / tau) / Z                           v_i: image i's entry in the memory bank
    Z = N * mean_j exp(v_j . v / tau)                           estimated once, on the first batch's noise
    h(i, v) = P(i | v) / (P(i | v) + k P_n),  P_n = 1/N         NCE posterior that v came from the data
    L = -log h(i, v) - sum_{j ~ P_n, k of them} log(1 - h(j, v)) + lambda ||v - v_i||^2
    after the step: v_i <- normalise(m v_i + (1 - m) v)

The last term is the proximal regularisation of Sec. 3.4: it keeps the embedding of an
image near its previous value, which damps the oscillation of the NCE objective.
One view per image is used; the bank entry plays the role of the second view. The k noise
entries are drawn once per step and shared by the batch: each sample still sees k uniform
draws (the same estimator), at the cost of one [B, D] x [D, k] product instead of a
[B, k, D] gather per sample as in the authors' code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import distributed
from selfsup.losses import nce
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.nn.memory import MemoryBank


class InstDisc(Method):
    name = "instdisc"
    family = "contrastive"
    paper = "Unsupervised Feature Learning via Non-Parametric Instance Discrimination (Wu, Xiong, Yu, Lin; CVPR)"
    year = 2018

    def __init__(self, encoder, cfg: dict, info: RunInfo):
        super().__init__(encoder, cfg, info)
        head = cfg["head"]
        self.projector = nn.Linear(info.feature_dim, head["proj_out_dim"])
        self.bank = MemoryBank(info.num_samples, head["proj_out_dim"])
        self.noise_samples = head["noise_samples"]
        self.bank_momentum = head["bank_momentum"]
        self.proximal_weight = head["proximal_weight"]
        self.temperature = cfg["loss"]["temperature"]
        self.register_buffer("log_partition", torch.tensor(float("nan")))  # log Z; NaN until estimated
        self._pending: tuple[Tensor, Tensor] | None = None
        self._partition_known = False  # avoids reading ``log_partition`` back from the device every step

    def forward(self, views: list[Tensor], labels: Tensor | None = None, indices: Tensor | None = None) -> StepOutput:
        if indices is None:
            raise ValueError("instdisc needs the dataset indices of the batch: call forward(views, indices=...)")
        h = self.encoder(views[0])
        v = F.normalize(self.projector(h).float(), dim=1)
        previous = self.bank[indices]
        noise = self.bank[self.bank.sample_indices(self.noise_samples)]
        data_logit = (v * previous).sum(1) / self.temperature
        noise_logits = v @ noise.T / self.temperature
        log_partition = self.estimate_log_partition(noise_logits)
        nce_loss = nce(
            data_logit - log_partition, noise_logits - log_partition,
            noise_prob=1.0 / self.bank.num_samples, k=self.noise_samples,
        )
        proximal = (v - previous).pow(2).sum(1).mean()
        self._pending = (indices, v.detach())
        metrics = {"nce": nce_loss.detach(), "proximal": proximal.detach()}  # tensors: no device sync per step
        return StepOutput(
            loss=nce_loss + self.proximal_weight * proximal, metrics=metrics, features=h, embeddings=(v, previous)
        )

    @torch.no_grad()
    def estimate_log_partition(self, noise_logits: Tensor) -> Tensor:
        """log Z with Z = N * E_j[exp(v_j . v / tau)] from the first batch, then frozen (the authors' choice)."""
        if not self._partition_known and bool(self.log_partition.isnan()):
            partition = noise_logits.exp().mean() * self.bank.num_samples
            self.log_partition.copy_(distributed.all_reduce_mean(partition).log())
        self._partition_known = True
        return self.log_partition

    def on_step_end(self, step: int, total_steps: int) -> None:
        if self._pending is not None:
            self.bank.update(*self._pending, momentum=self.bank_momentum)
            self._pending = None
