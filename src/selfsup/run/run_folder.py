"""The run folder of DESIGN.md, kept as the record of exactly one run with one writer.

- A new run goes into a new or empty folder; a folder that already holds a run is refused (add
  ``--resume`` to continue it, ``--overwrite`` to replace it) and is never half-overwritten.
  ``--overwrite`` clears it completely, and only if it is a run folder.
- Without ``--out`` a run gets a new numbered folder ``runs/METHOD-DATA/version_N``, as
  Lightning's ``version_N``.
- A lock (``.lock``, an ``flock`` held while training, with the holder's PID and host) stops a
  second training on the same folder. The kernel drops the lock when its process dies, even by
  SIGKILL, so a lock left by a dead process is recognised as stale and taken over.
- On resume, ``metrics.jsonl`` is rewritten from the checkpoint's history (rows logged after the
  last checkpoint belong to steps the resumed run trains again) and temporary files of
  interrupted atomic writes are removed.
- TensorBoard event files go to ``tensorboard/`` (``run/tensorboard.py``); a resumed run hides the
  events logged after its checkpoint.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
from pathlib import Path
from typing import Any

import torch

from selfsup.config.build import dump, load_yaml
from selfsup.run import tensorboard
from selfsup.run.checkpoint import atomic_write, is_temporary

LOCK = ".lock"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = Path("checkpoints") / "last.pt"
RUN_MARKERS = (CONFIG, METRICS, "checkpoints", "encoder.safetensors", "summary.json")


def default_base(method: str, data: str) -> Path:
    """Where runs of ``method`` on ``data`` go when no ``--out`` is given: ``runs/METHOD-DATA``."""
    return Path("runs") / f"{method}-{re.sub(r'[^A-Za-z0-9._-]+', '_', data).strip('_')}"


def next_version(base: Path) -> Path:
    """``base/version_N`` with N one more than the highest there (0 for the first run)."""
    taken = [int(p.name[8:]) for p in base.glob("version_*") if p.name[8:].isdigit()] if base.is_dir() else []
    return base / f"version_{max(taken, default=-1) + 1}"


def holds_run(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in RUN_MARKERS)


def lock_holder(path: Path) -> str | None:
    """'process PID on HOST' while another process trains in ``path``; None when no live process holds its lock."""
    lock = path / LOCK
    if not lock.is_file():
        return None
    with open(lock) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _describe(handle.read())
        fcntl.flock(handle, fcntl.LOCK_UN)
    return None


def _describe(content: str) -> str:
    fields = dict(part.split("=", 1) for part in content.split() if "=" in part)
    return f"process {fields.get('pid', '?')} on {fields.get('host', '?')}"


def check_target(path: Path, resume: bool, overwrite: bool) -> None:
    """Read-only checks that ``path`` can take this run; one line (``ValueError``) naming what to do otherwise."""
    if resume and overwrite:
        raise ValueError("--resume continues a run and --overwrite replaces it: choose one")
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file, not a folder: choose another --out")
    holder = lock_holder(path)
    if holder:
        raise ValueError(f"{path} is in use by {holder} (lock {path / LOCK}): wait for it to finish or stop it")
    if resume:
        if not (path / CONFIG).is_file():
            raise ValueError(f"--resume: no run at {path} ({CONFIG} missing); start it without --resume")
        if not (path / CHECKPOINT).is_file():
            raise ValueError(
                f"--resume: {path} has no {CHECKPOINT.as_posix()} (it stopped before its first checkpoint); "
                "start it again with --overwrite"
            )
    elif holds_run(path) and not overwrite:
        raise ValueError(
            f"{path} already holds a run: add --resume to continue it, --overwrite to replace it, "
            "or choose another --out"
        )
    elif overwrite and path.is_dir() and any(path.iterdir()) and not holds_run(path):
        raise ValueError(f"--overwrite: {path} is not a run folder (no {CONFIG}); refusing to clear it")
    _check_writable(path)


def _check_writable(path: Path) -> None:
    existing = next(p for p in [path, *path.parents] if p.exists())
    if not existing.is_dir():
        raise ValueError(f"cannot create {path}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write to {existing} (permission denied): choose another --out")


def read_config(path: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` (one line if it is missing or malformed); ``path``: the run folder or the file."""
    file = Path(path)
    if not file.exists():
        raise ValueError(f"{file} does not exist: pass a run folder or its {CONFIG}")
    if not file.is_file():
        file = file / CONFIG
    if not file.is_file():
        raise ValueError(f"{file.parent} is not a run folder ({CONFIG} missing)")
    try:
        cfg = load_yaml(file.read_text())
    except ValueError as error:
        raise ValueError(
            f"{file} is malformed ({error}); restore it from the run's source or start a new run"
        ) from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{file} is not a selfsup config (it holds a {type(cfg).__name__})")
    return cfg


def _lock(file: Path):
    """An open handle of ``file`` holding its exclusive ``flock``; one line if a live process holds it."""
    while True:
        handle = open(file, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.seek(0)
            holder = _describe(handle.read())
            handle.close()
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise ValueError(
                f"{file.parent} is in use by {holder} (lock {file}): wait for it to finish or stop it"
            ) from None
        if file.exists() and os.stat(file).st_ino == os.fstat(handle.fileno()).st_ino:
            return handle
        handle.close()  # its holder released and removed it while we waited: lock the new file


class RunFolder:
    """The claimed run folder: lock held, files written only through its methods."""

    def __init__(self, path: Path, handle):
        self.path, self._handle = path, handle
        self.tensorboard: tensorboard.TensorBoardLog | None = None

    @classmethod
    def claim(cls, path: Path, resume: bool = False, overwrite: bool = False) -> "RunFolder":
        """Check ``path`` again, create it and take its lock; ``ValueError`` (one line) if another process holds it."""
        check_target(path, resume, overwrite)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"cannot create the run folder {path} ({error.strerror})") from None
        handle = _lock(path / LOCK)
        handle.seek(0)
        previous = handle.read().strip()
        if previous:
            print(f"selfsup: note: took over the stale lock of {_describe(previous)}, which is no longer running "
                  f"({path / LOCK})", file=sys.stderr)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid={os.getpid()} host={socket.gethostname()}\n")
        handle.flush()
        return cls(path, handle)

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def start(self, cfg: dict[str, Any], overwrite: bool = False) -> None:
        """A fresh run: clear the folder (``overwrite``), then write ``config.yaml`` and an empty ``metrics.jsonl``."""
        if overwrite:
            for entry in self.path.iterdir():
                if entry.name != LOCK:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        atomic_write(self.path / CONFIG, lambda f: f.write(dump(cfg).encode()))
        atomic_write(self.path / METRICS, lambda f: None)
        if tensorboard.wanted(cfg["train"].get("tensorboard", "auto")):
            self.tensorboard = tensorboard.TensorBoardLog(self.path)

    def resume(self, cfg: dict[str, Any], history: list[dict[str, Any]], step: int = 0) -> None:
        """A resumed run: temporary leftovers removed, config rewritten, metrics cut back to ``history`` (and
        TensorBoard's events to the checkpoint's ``step``)."""
        for leftover in [p for p in self.path.rglob(".*") if p.is_file() and is_temporary(p)]:
            leftover.unlink()
        atomic_write(self.path / CONFIG, lambda f: f.write(dump(cfg).encode()))
        rows = "".join(json.dumps(record) + "\n" for record in history)
        atomic_write(self.path / METRICS, lambda f: f.write(rows.encode()))
        if tensorboard.wanted(cfg["train"].get("tensorboard", "auto")):
            self.tensorboard = tensorboard.TensorBoardLog(self.path, purge_step=step)

    def log(self, record: dict[str, Any]) -> None:
        """Append one row to ``metrics.jsonl`` (and write the epoch to TensorBoard)."""
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.epoch(record)

    def log_step(self, step: int, metrics: dict[str, Any], lr: float, images: int) -> None:
        """One training step's metrics (device tensors) for TensorBoard; nothing is read until the epoch ends."""
        if self.tensorboard is not None:
            self.tensorboard.step(step, metrics, lr, images)

    def log_embeddings(self, features: Any, labels: Any, dataset: Any, step: int) -> None:
        """The test embeddings in TensorBoard's projector, with class names and, for in-memory images, a sprite."""
        if self.tensorboard is None:
            return
        images = dataset.data if dataset.kind == "image" and isinstance(dataset.data, torch.Tensor) else None
        self.tensorboard.embeddings(features, labels, dataset.classes, images, step)

    def release(self) -> None:
        """Drop the lock and remove its file: the folder is free for the next run or resume."""
        if self._handle is None:
            return
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        (self.path / LOCK).unlink(missing_ok=True)
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()
