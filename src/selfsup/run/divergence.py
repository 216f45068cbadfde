"""The divergence guard: a non-finite loss is caught at the step it happens, and no checkpoint holds its weights.

``train.on_nan``:
- ``stop`` (default): the run stops and ``checkpoints/last.pt``, if one was written, keeps the last good state. On the CPU
  the loss is looked at before the optimizer step, so even the weights in memory stay good. On a GPU a
  read would make the host wait for the device at every step, so the check stays on the device: the
  first bad step's number is recorded there, and read only where the host waits anyway (the progress
  bar's loss, every 10 steps; the end of an epoch) and before every checkpoint, which is never written
  after a bad step.
- ``skip``: a step with a non-finite loss applies no update (no backward, optimizer step or
  method state update; the batch-norm statistics its forward pass changed are put back) and is
  counted (``skipped_steps`` in metrics.jsonl). Deciding that before the update needs the loss on the
  host, one sync per step on a GPU, as AMP's GradScaler does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

MODES = ("stop", "skip")


class Diverged(FloatingPointError):
    """A loss became nan or inf; the run stopped before saving the weights it produced."""


class DivergenceGuard:
    """Watches each step's loss; ``admit`` says whether the step's update may be applied."""

    def __init__(self, mode: str, device: torch.device):
        if mode not in MODES:
            raise ValueError(f"train.on_nan must be stop or skip, not '{mode}'")
        self.mode, self.device = mode, device
        self.deferred = mode == "stop" and device.type != "cpu"
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)  # step number, -1: none yet
        self.skipped = 0
        self.checkpoint: Path | None = None  # the run's last.pt, when this process writes one (the message names it)
        self._statistics: list[Tensor] = []
        self._saved: list[Tensor] = []

    def watch(self, module: nn.Module) -> None:
        """``skip``: keep the batch-norm statistics of ``module`` so that a skipped step's forward can be undone."""
        if self.mode == "skip":
            norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
            self._statistics = [b for m in norms for b in m.buffers(recurse=False)]

    def before_step(self) -> None:
        """Remember the statistics a forward pass may change (``skip`` only; small: a few numbers per channel)."""
        if self._statistics:
            self._saved = [b.clone() for b in self._statistics]

    def admit(self, loss: Tensor, step: int) -> bool:
        """True to apply this step; False to skip it (``skip``); raises ``Diverged`` (``stop``, on the CPU)."""
        finite = torch.isfinite(loss.detach()).all()
        if self.deferred:
            self.first_bad = torch.where((self.first_bad < 0) & ~finite, step, self.first_bad)
            return True
        if bool(finite):
            return True
        if self.mode == "skip":
            for buffer, saved in zip(self._statistics, self._saved):
                buffer.copy_(saved)
            self.skipped += 1
            return False
        raise self._error(step, float(loss.detach().float().reshape(-1)[0]))

    def check(self) -> None:
        """Raise ``Diverged`` if a bad step was recorded on the device.

        A host read: call it where the host waits for the device anyway.
        """
        if self.deferred:
            step = int(self.first_bad)
            if step >= 0:
                raise self._error(step, None)

    def _error(self, step: int, value: float | None) -> Diverged:
        """What stopped, and what is true of the run folder now: a resume needs a checkpoint to resume from."""
        became = f"became {value}" if value is not None else "became nan or inf"
        if self.checkpoint is not None and self.checkpoint.is_file():
            return Diverged(
                f"the loss {became} at step {step + 1}: training stopped and checkpoints/last.pt keeps the last good "
                "state; lower optim.lr, or continue with --resume --set train.on_nan=skip to skip such steps"
            )
        return Diverged(
            f"the loss {became} at step {step + 1}, before any checkpoint was saved: training stopped with nothing to "
            "resume; start again with a smaller optim.lr (--overwrite to reuse --out), or --set train.on_nan=skip"
        )
