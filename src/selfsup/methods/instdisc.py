"""Instance discrimination (Wu et al. 2018): every image is its own class, scored against a memory bank.

    v = normalise(W f(x))                                       128-d embedding of the image i
    P(i | v) = exp(v_i . v / tau) / Z                           v_i: image i's entry in the memory bank
    Z = N * mean_j exp(v_j . v / tau)                           the paper's Monte Carlo estimate over the k noise entries
    h(i, v) = P(i | v) / (P(i | v) + k P_n),  P_n = 1/N         NCE posterior that v came from the data
    L = -log h(i, v) - sum_{j ~ P_n, k of them} log(1 - h(j, v)) + lambda ||v - v_i||^2
    after the step: v_i <- normalise(m v_i + (1 - m) v)

The last term is the proximal regularisation of Sec. 3.3: it keeps the embedding of an
image near its previous value, which damps the oscillation of the NCE objective. The authors'
released code (zhirongw/lemniscate.pytorch: cifar.py, main.py, lib/NCEAverage.py, lib/NCECriterion.py)
has no such term, so ``head.proximal_weight`` (lambda) defaults to 0, what they ran; a positive
value (e.g. ``--set head.proximal_weight=50``) adds the term.

Z is a constant of the loss (no gradient). The paper notes that freezing it at the value
of the initial batches works in practice (``head.partition_estimate: first_batch``, the
authors' code: lib/NCEAverage.py sets Z = N * mean exp(v_j . v / tau) over the first batch's
K + 1 entries, data entry included, and keeps it). That value is measured against the random
vectors the bank starts with; once the bank holds the network's own, far from uniform, embeddings the true Z is
orders of magnitude larger (log Z 7.5 at the first step, 14 in epoch 2 on digits), so a frozen Z
overestimates every P(j | v) by that factor, the noise posteriors saturate at h = 1 and
the noise term pushes each embedding away from the bank with a force up to k times that of
the data term. The embeddings then flee their own bank entries (proximal term stuck at 2,
NCE rising, collapse) whenever the bank is rewritten before the features have spread,
as in short or small-data runs. ``every_step`` (the default) re-estimates Z from each
step's noise with the same formula.

``head.noise_samples: 0`` computes P(i | v) exactly, a softmax over every bank entry with the loss
-log P(i | v) (Eq. 2; the authors' ``--nce-k 0``, lib/LinearAverage.py with a cross-entropy): for a
bank of a few thousand images the exact sum costs less than 4096 noise draws and has no estimator
error. The recipe picks it when the preset's noise samples exceed a quarter of the dataset.

One view per image is used; the bank entry plays the role of the second view. The k noise
entries are drawn once per step and shared by the batch: each sample still sees k uniform
draws (the same estimator), at the cost of one [B, D] x [D, k] product instead of a
[B, k, D] gather per sample as in the authors' code.
"""

from __future__ import annotations

import math

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
    prevents_collapse = "a memory bank of all N embeddings, NCE against noise samples"
    paper = "Unsupervised Feature Learning via Non-Parametric Instance Discrimination (Wu, Xiong, Yu, Lin; CVPR)"
    year = 2018

    def __init__(self, encoder, cfg: dict, info: RunInfo):
        super().__init__(encoder, cfg, info)
        head = cfg["head"]
        self.projector = nn.Linear(info.feature_dim, head["proj_out_dim"])
        self.bank = MemoryBank(info.num_samples, head["proj_out_dim"])
        self.noise_samples = head["noise_samples"]
        self.bank_momentum = head["bank_momentum"]
        self.proximal_weight = head.get("proximal_weight", 0.0)
        self.temperature = cfg["loss"]["temperature"]
        self.partition_estimate = head["partition_estimate"]
        if self.partition_estimate not in ("every_step", "first_batch"):
            raise ValueError(
                f"unknown head.partition_estimate '{self.partition_estimate}'; use every_step or first_batch"
            )
        self.register_buffer("log_partition", torch.tensor(float("nan")))  # log Z; NaN until estimated
        self._pending: tuple[Tensor, Tensor] | None = None
        self._partition_known = False  # avoids reading ``log_partition`` back from the device every step

    def forward(self, views: list[Tensor], labels: Tensor | None = None, indices: Tensor | None = None) -> StepOutput:
        if indices is None:
            raise ValueError("instdisc needs the dataset indices of the batch: call forward(views, indices=...)")
        h = self.encoder(views[0])
        v = F.normalize(self.projector(h).float(), dim=1)
        previous = self.bank[indices]
        if self.noise_samples == 0:
            logits = v @ self.bank.vectors.T / self.temperature
            nce_loss = F.cross_entropy(logits, indices)
            log_partition = logits.detach().logsumexp(1).mean()
        else:
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
        metrics = {  # tensors: no device sync per step; "nce" is the exact -log P(i | v) with noise_samples 0
            "nce": nce_loss.detach(), "proximal": proximal.detach(), "log_partition": log_partition.clone(),
        }
        return StepOutput(
            loss=nce_loss + self.proximal_weight * proximal, metrics=metrics, features=h, embeddings=(v, previous)
        )

    @torch.no_grad()
    def estimate_log_partition(self, noise_logits: Tensor) -> Tensor:
        """log Z with Z = N * E_j[exp(v_j . v / tau)] over this step's noise (all ranks), or frozen at its first value."""
        frozen = self.partition_estimate == "first_batch"
        if not (frozen and (self._partition_known or not bool(self.log_partition.isnan()))):
            mean_exp = distributed.all_reduce_mean(noise_logits.exp().mean())
            self.log_partition.copy_(mean_exp.log() + math.log(self.bank.num_samples))
        self._partition_known = True
        return self.log_partition

    def on_step_end(self, step: int, total_steps: int) -> None:
        if self._pending is not None:
            self.bank.update(*self._pending, momentum=self.bank_momentum)
            self._pending = None
