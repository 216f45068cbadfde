"""One epoch's row of ``metrics.jsonl``, accumulated step by step on the device.

Its state travels in mid-epoch checkpoints, so that an epoch interrupted and resumed logs the same
row as one trained in one go (up to its wall-clock fields).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from selfsup import distributed
from selfsup.evaluate.monitors import collapse_monitors

TIMING_KEYS = ("images_per_s", "epoch_s")  # wall-clock fields: the only ones that differ between equal runs


class EpochRecord:
    """Metric sums (device tensors, no sync per step), the last batches' embeddings for the collapse monitors,
    the wall time and the last lr of the epoch so far."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.monitor: list[tuple[Tensor, Tensor]] = []
        self.seconds = 0.0
        self.lr = 0.0
        self.steps = 0  # steps whose metrics are in ``sums`` (skipped steps are not)
        self.skipped = 0

    def add(self, metrics: dict[str, Tensor], embeddings: tuple[Tensor, Tensor] | None, monitor: bool) -> None:
        for key, value in metrics.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()
        if monitor and embeddings is not None:
            self.monitor.append(tuple(e.detach().float() for e in embeddings))
        self.steps += 1

    def state(self) -> dict[str, Any]:
        """Tensors and plain values only (a checkpoint loads with ``weights_only``)."""
        return {
            "sums": {k: v.cpu() for k, v in self.sums.items()},
            "monitor": [[z1.cpu(), z2.cpu()] for z1, z2 in self.monitor],
            "seconds": self.seconds, "lr": self.lr, "steps": self.steps, "skipped": self.skipped,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device) -> "EpochRecord":
        record = cls()
        record.sums = {k: v.to(device) for k, v in state["sums"].items()}
        record.monitor = [(z1.to(device), z2.to(device)) for z1, z2 in state["monitor"]]
        record.seconds, record.lr = state["seconds"], state["lr"]
        record.steps, record.skipped = state["steps"], state["skipped"]
        return record

    def row(self, epoch: int, step: int, images: int, count_skipped: bool) -> dict[str, Any]:
        """The metrics.jsonl row: means over the epoch's steps (and ranks), lr, throughput, collapse monitors."""
        row: dict[str, Any] = {"epoch": epoch, "step": step}
        row.update({k: distributed.all_reduce_mean(v).item() / max(self.steps, 1) for k, v in self.sums.items()})
        row["lr"] = self.lr
        if count_skipped:
            row["skipped_steps"] = self.skipped
        row["images_per_s"] = images / max(self.seconds, 1e-9)
        row["epoch_s"] = self.seconds
        if self.monitor:
            z1 = distributed.gather_no_grad(torch.cat([p[0] for p in self.monitor]))
            z2 = distributed.gather_no_grad(torch.cat([p[1] for p in self.monitor]))
            row.update(collapse_monitors(z1, z2))
        return row
