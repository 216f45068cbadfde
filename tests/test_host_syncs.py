"""No training step makes the host wait for the device.

On a GPU the host queues kernels ahead of the device; anything that reads a device value on the host
(``.item()``, ``bool(t)``, ``float(t)``, ``int(t)``, ``.tolist()``, ``.cpu()``), sizes an output by the data
(``nonzero``, ``masked_select``, indexing by a boolean mask) or copies host data to the device
(``torch.tensor``, ``new_tensor``) makes it wait, and a launch-bound step then runs at the speed of the
round trip. This CPU has no such wait, so the test counts the calls themselves, during steps of every
image method at tiny settings, and allows none per step.

What the trainer documents and keeps: the divergence guard's read of the loss, on the CPU or with
``train.on_nan=skip`` (on a GPU with ``stop`` it records on the device; the test sets the guard so);
the loop's read of the loss and the guard every 10 steps (outside ``_step``); a method's one-time
decisions at its first step (so the first step is not counted). ``torch.optim``'s own code is not
counted: its CPU Adam/AdamW read their step counts, and on CUDA the trainer builds the fused ones.
"""

from __future__ import annotations

import functools
import traceback
from collections import Counter
from contextlib import contextmanager
from typing import Iterator

import pytest
import torch

from selfsup import methods
from selfsup.commands.bench import synthetic_images
from selfsup.data import ops
from selfsup.train.setup import Datasets, make_config
from selfsup.train.trainer import Trainer

READS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu", "nonzero", "masked_select")
COPIES = ("tensor", "as_tensor")  # torch.<name>(host data): a copy to the device
IMAGE_METHODS = [name for name, cls in methods.available().items() if cls.data_kind in ("image", "any")]
TINY = ["backbone.width=4", "train.batch_size=16", "train.epochs=2", "train.device=cpu", "train.progress=false",
        "eval.every=0", "eval.plots=false"]
STATE_ON = {  # settings under which each method's per-step state is written and read within a few steps
    "swav": ["head.queue_size=32", "head.queue_start_epoch=0"],
    "adco": ["head.num_negatives=32"],
    "wmse": ["loss.w_size=8"],
}


def _is_mask(index: object) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(torch.is_tensor(i) and i.dtype == torch.bool for i in items)


class HostSyncs:
    """Counts, by (call, file:line of the innermost selfsup frame), the calls that wait for or copy to a device,
    made while ``watching()``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.counts: Counter = Counter()
        self._on = False
        for name in READS:
            self._count(monkeypatch, torch.Tensor, name, name)
        for name in ("nonzero", "masked_select", *COPIES):
            self._count(monkeypatch, torch, name, f"torch.{name}")
        self._count(monkeypatch, torch.Tensor, "new_tensor", "new_tensor")
        self._count(monkeypatch, torch.Tensor, "__getitem__", "x[mask]", lambda self, index: _is_mask(index))
        self._count(monkeypatch, torch.Tensor, "__setitem__", "x[mask] =", lambda self, index, *_: _is_mask(index))

    @contextmanager
    def watching(self) -> Iterator[None]:
        self._on = True
        try:
            yield
        finally:
            self._on = False

    def _count(self, monkeypatch: pytest.MonkeyPatch, owner: object, name: str, label: str, only=None) -> None:
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            if self._on and (only is None or only(*args)):
                self._record(label)
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    def _record(self, label: str) -> None:
        stack = traceback.extract_stack()[:-2]  # less this method and the wrapper
        if any("/torch/optim/" in frame.filename for frame in stack):
            return
        ours = [f for f in stack if "/selfsup/" in f.filename]
        where = f"{ours[-1].filename.rsplit('/selfsup/', 1)[-1]}:{ours[-1].lineno}" if ours else "?"
        self.counts[(label, where)] += 1


def _trainer(method: str, monkeypatch: pytest.MonkeyPatch) -> Trainer:
    """``method`` at tiny settings, its guard and views as on a GPU."""
    monkeypatch.setattr(ops, "color_jitter", functools.partial(ops.color_jitter, select_hue=False))
    data = synthetic_images(32)  # two steps an epoch
    cfg = make_config(method, "synthetic", data, assignments=TINY + STATE_ON.get(method, []))
    trainer = Trainer(cfg, Datasets(data, data, data))
    trainer.guard.deferred = True  # as on a GPU with train.on_nan=stop: the guard records on the device
    return trainer


def _train_epoch(trainer: Trainer, epoch: int, syncs: HostSyncs, skip_first: bool = False) -> None:
    """The epoch's steps as the trainer's loop makes them, each watched by ``syncs`` (but the first if asked)."""
    trainer.method.train()
    trainer.method.on_epoch_start(epoch)
    order = trainer._epoch_order()
    for i in range(trainer.steps_per_epoch):
        indices = order[i * trainer.batch_size : (i + 1) * trainer.batch_size]
        batch = trainer.pretrain_data[indices]
        if skip_first and i == 0:
            trainer._step(indices, batch)
            continue
        with syncs.watching():
            trainer._step(indices, batch)


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_a_training_step_never_waits_for_the_device(method, monkeypatch):
    trainer = _trainer(method, monkeypatch)
    syncs = HostSyncs(monkeypatch)
    _train_epoch(trainer, 0, syncs, skip_first=True)  # the first step: one-time decisions
    _train_epoch(trainer, 1, syncs)  # the second epoch too: DeepCluster v2's assignments, full queues and banks
    steps = 2 * trainer.steps_per_epoch - 1
    assert not syncs.counts, f"{method}: host reads or copies in {steps} steps: {dict(syncs.counts)}"


def test_the_counter_sees_each_kind_of_host_read(monkeypatch):
    x = torch.arange(4.0)
    syncs = HostSyncs(monkeypatch)
    with syncs.watching():
        x.sum().item(), bool(x.any()), float(x[0]), x[x > 1], x.nonzero(), torch.tensor([1.0]), x.new_tensor([2.0])
    assert {name for name, _ in syncs.counts} == {
        "item", "__bool__", "__float__", "x[mask]", "nonzero", "torch.tensor", "new_tensor"
    }
