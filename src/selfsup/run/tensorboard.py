"""TensorBoard event files of a run, in ``RUN/tensorboard`` (``tensorboard --logdir runs`` shows every run).

- per step (tags ``step/...``): the loss, the method's metrics, the online probe, the learning rate and
  images/s. The step's values stay on the device as tensors and are read once per epoch, so logging adds
  no host sync to the step; images/s is the batch over the host's time between two steps (on a GPU the
  host runs at most a bounded queue ahead, so it averages to the device's rate).
- per epoch (tags ``epoch/...``, at the epoch's last step): every number of the ``metrics.jsonl`` row
  (loss, lr, images/s, online probe, kNN when evaluated, the collapse monitors) and the epoch itself.
- at the end: the test embeddings in the embedding projector, with their class names and an image sprite
  (at most ``MAX_POINTS`` of them, a seeded sample; thumbnails shrunk to keep the sprite within 8192 px).

The ``tensorboard`` package is optional (``pip install tensorboard``; the ``tensorboard`` and ``test`` extras
have it): it brings grpcio, protobuf and a web server, more than a training library should impose.
``train.tensorboard: auto`` logs when it is installed, ``true`` asks for it (one line if it is missing),
``false`` never logs. A resumed run hides the events its checkpoint does not hold (``purge_step``).
"""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.data.images import printable

FOLDER = "tensorboard"
MAX_POINTS = 5000
MAX_SPRITE_SIDE = 8192  # TensorBoard's projector limit for the sprite image
SKIPPED_EPOCH_KEYS = {"epoch", "step"}


def wanted(setting: Any) -> bool:
    """Whether ``train.tensorboard`` asks for logging here; one line if it asks and the package is missing."""
    if setting not in ("auto", True, False):
        raise ValueError(f"train.tensorboard must be auto, true or false, not {setting!r}")
    installed = importlib.util.find_spec("tensorboard") is not None
    if setting is True and not installed:
        raise ValueError("train.tensorboard=true needs the tensorboard package: pip install tensorboard "
                         "(or set train.tensorboard=false)")
    return installed and setting is not False


class TensorBoardLog:
    """The event writer of one run folder."""

    def __init__(self, run: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run / FOLDER), purge_step=purge_step)
        self.pending: list[tuple[int, dict[str, Tensor], float, float | None]] = []
        self.last_time: float | None = None

    def step(self, step: int, metrics: dict[str, Tensor], lr: float, images: int) -> None:
        """Keep step ``step``'s metrics (device tensors, read at the epoch's end), lr and throughput."""
        now = time.perf_counter()
        rate = images / (now - self.last_time) if self.last_time is not None else None
        self.last_time = now
        self.pending.append((step, {k: v.detach() for k, v in metrics.items()}, lr, rate))

    def epoch(self, row: dict[str, Any]) -> None:
        """Write the epoch's steps and its ``metrics.jsonl`` row."""
        if self.pending:
            keys = sorted({k for _, metrics, _, _ in self.pending for k in metrics})
            values = {k: [m[k].float() for _, m, _, _ in self.pending if k in m] for k in keys}
            host = {k: torch.stack(v).cpu().tolist() for k, v in values.items()}  # one read per key and epoch
            position = dict.fromkeys(keys, 0)
            for step, metrics, lr, rate in self.pending:
                for key in metrics:
                    self.writer.add_scalar(f"step/{key}", host[key][position[key]], step)
                    position[key] += 1
                self.writer.add_scalar("step/lr", lr, step)
                if rate is not None:
                    self.writer.add_scalar("step/images_per_s", rate, step)
        self.pending, self.last_time = [], None
        at = row["step"]
        self.writer.add_scalar("epoch/epoch", row["epoch"], at)
        for key, value in row.items():
            if key not in SKIPPED_EPOCH_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{key}", value, at)
        self.writer.flush()

    def embeddings(
        self, features: Tensor, labels: Tensor, classes: list[str], images: Tensor | None, step: int, seed: int = 0
    ) -> None:
        """The test embeddings in the projector, named by class, with ``images`` (uint8 [N, C, H, W]) as sprite."""
        keep = torch.arange(len(features))
        if len(features) > MAX_POINTS:
            keep = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:MAX_POINTS].sort().values
        # printable: a class folder's name may hold a newline (a TSV row) or bytes that are not UTF-8
        names = [printable(classes[y]) if 0 <= y < len(classes) else str(y) for y in labels.cpu()[keep].tolist()]
        sprite = None if images is None else thumbnails(images[keep.to(images.device)])
        self.writer.add_embedding(features.float().cpu()[keep], metadata=names, label_img=sprite, global_step=step,
                                  tag="test_embeddings")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def thumbnails(images: Tensor) -> Tensor:
    """uint8 images as float [0, 1], shrunk (antialiased) so that a square grid of all of them fits 8192 px."""
    x = images.cpu().float() / 255.0
    side = max(1, MAX_SPRITE_SIDE // math.ceil(math.sqrt(len(x))))
    if x.shape[-1] > side or x.shape[-2] > side:
        x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return x
