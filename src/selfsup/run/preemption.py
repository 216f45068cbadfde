"""Preemption as clusters do it: SIGTERM or SIGUSR1 asks the run to save a checkpoint and exit for requeue.

SLURM sends SIGTERM before it preempts or cancels a job (then SIGKILL after ``GraceTime`` /
``KillWait``), and ``sbatch --signal=USR1@90`` sends SIGUSR1 90 s before the time limit. The handler
only records the signal; the trainer looks at it after every step, saves a checkpoint there (mid-epoch
if need be, resumable to the same weights as an uninterrupted run) and raises ``Preempted``; the command
line then exits with ``REQUEUE_EXIT_CODE`` (75, ``EX_TEMPFAIL``: try again later), which a job script
turns into ``scontrol requeue`` (docs/distributed.md). Under DDP the ranks agree at every step, over a
small CPU (gloo) group, so that they all stop after the same step without a sync of the GPU.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import torch
import torch.distributed as dist

from selfsup import distributed

REQUEUE_EXIT_CODE = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """The run was asked to stop by a signal and saved a checkpoint to resume from."""


class PreemptionWatch:
    """Records SIGTERM / SIGUSR1 while training (a context manager); ``requested()`` says whether to stop now."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}
        self._group = None

    def __enter__(self) -> "PreemptionWatch":
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._record)
        if distributed.is_distributed():
            self._group = dist.new_group(backend="gloo")
        return self

    def __exit__(self, *exc: Any) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
        if self._group is not None:
            dist.destroy_process_group(self._group)
            self._group = None

    def _record(self, number: int, frame: Any) -> None:
        self.signal = self.signal or signal.Signals(number).name

    def requested(self) -> str | None:
        """The signal's name if this process (or, under DDP, any rank) received one; else None."""
        if self._group is None:
            return self.signal
        flag = torch.tensor([0 if self.signal is None else 1], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return (self.signal or "a signal on another rank") if int(flag) else None
