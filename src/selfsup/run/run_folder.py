"""The run folder of DESIGN.md, kept as the record of exactly one run with one writer, holding only what it wrote.

- The folder carries a manifest, ``selfsup-manifest.json`` (``run/files.py``): every file selfsup writes
  there is listed in it before it is written. The manifest is what makes a folder a run folder.
- A new run goes into a new or empty folder. A folder that holds a run is refused (add ``--resume`` to
  continue it, ``--overwrite`` to replace it); so is a non-empty folder that holds none: selfsup does not
  mix its files with others'. ``--out`` inside a run folder (``RUN/checkpoints``) is refused too.
- ``--overwrite`` deletes the manifest's entries and nothing else, and only when the folder holds nothing
  else: a file, folder or symbolic link it does not list is named in a one-line refusal and everything is
  kept (as ``git clean`` keeps untracked files without ``-f``).
- A run of an earlier selfsup has no manifest. It counts as a run when its ``config.yaml`` is a selfsup
  config and ``metrics.jsonl`` is there; its entries are then the files those versions wrote
  (``LEGACY_ENTRIES``) that are present. ``--resume`` writes them into a new manifest and continues;
  ``--overwrite`` deletes them alone, and refuses if anything else is there.
- Nothing is written through a symbolic link: one at a name selfsup writes (``.lock``, ``metrics.jsonl``,
  ``checkpoints``, ``curves.png``...) is refused in one line; the lock is opened with ``O_NOFOLLOW`` (and
  refused if it has another name, a hard link), ``metrics.jsonl`` appended to likewise, every other file
  written new and renamed into place, with the permissions the umask allows.
- Without ``--out`` a run gets a new numbered folder ``runs/METHOD-DATA/version_N`` (as Lightning's).
- A lock (``.lock``, an ``flock`` held while training, with the holder's PID and host) stops a
  second training on the same folder. The kernel drops the lock when its process dies, even by
  SIGKILL, so a lock left by a dead process is recognised as stale and taken over.
- On resume, ``metrics.jsonl`` is rewritten from the checkpoint's history (rows logged after the
  last checkpoint belong to steps the resumed run trains again) and temporary files of
  interrupted atomic writes are removed.
- TensorBoard event files go to ``tensorboard/`` (``run/tensorboard.py``), listed whole in the manifest; a
  resumed run hides the events logged after its checkpoint.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import socket
import stat
import sys
from pathlib import Path
from typing import IO, Any

import torch

from selfsup.config.build import dump, load_yaml
from selfsup.run import tensorboard
from selfsup.run.files import (
    MANIFEST, append, atomic_write, is_temporary, link_refusal, read_manifest, record_entry, refuse_links, survey,
    write_manifest,
)

LOCK = ".lock"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = Path("checkpoints") / "last.pt"
EXPORTS = ("encoder.onnx", "encoder.torchscript.pt", "encoder.torchvision.pt", "encoder.timm.pt")
# What selfsup versions before the manifest wrote in a run folder (``selfsup export`` and ``eval`` included).
LEGACY_ENTRIES = (
    CONFIG, METRICS, CHECKPOINT.as_posix(), "encoder.safetensors", "summary.json", "curves.png", "embedding_map.png",
    f"{tensorboard.FOLDER}/", *EXPORTS, *(f"{name}.json" for name in EXPORTS),
)
LEGACY_EVAL = "eval/finetune-*.json"
SHOWN_FOREIGN = 3


def default_base(method: str, data: str) -> Path:
    """Where runs of ``method`` on ``data`` go when no ``--out`` is given: ``runs/METHOD-DATA``."""
    return Path("runs") / f"{method}-{re.sub(r'[^A-Za-z0-9._-]+', '_', data).strip('_')}"


def next_version(base: Path) -> Path:
    """``base/version_N`` with N one more than the highest there (0 for the first run)."""
    taken = [int(p.name[8:]) for p in base.glob("version_*") if p.name[8:].isdigit()] if base.is_dir() else []
    return base / f"version_{max(taken, default=-1) + 1}"


def owned_entries(path: Path) -> set[str] | None:
    """What selfsup wrote in ``path`` (the manifest's entries, or a legacy run's known files); None: no run there."""
    if not path.is_dir():
        return None
    entries = read_manifest(path)
    return entries if entries is not None else _legacy_entries(path)


def holds_run(path: Path) -> bool:
    return owned_entries(path) is not None


def _legacy_entries(path: Path) -> set[str] | None:
    """The files a run of a selfsup without manifests wrote that are in ``path``; None if ``path`` is no such run."""
    if not (_is_regular(path / CONFIG) and _is_regular(path / METRICS) and _is_selfsup_config(path / CONFIG)):
        return None
    present = {entry for entry in LEGACY_ENTRIES if os.path.lexists(path / entry.rstrip("/"))}
    return present | {file.relative_to(path).as_posix() for file in path.glob(LEGACY_EVAL)}


def _is_regular(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _is_selfsup_config(file: Path) -> bool:
    """Whether ``file`` reads as a selfsup config (a mapping naming a method), not some other tool's config.yaml."""
    try:
        cfg = load_yaml(file.read_text())
    except (ValueError, OSError):  # UnicodeDecodeError is a ValueError
        return False
    return isinstance(cfg, dict) and "method" in cfg


def _foreign_refusal(path: Path, foreign: list[str]) -> str:
    shown = ", ".join(foreign[:SHOWN_FOREIGN]) + (f" and {len(foreign) - SHOWN_FOREIGN} more" if
                                                  len(foreign) > SHOWN_FOREIGN else "")
    return (f"--overwrite: {path} holds what selfsup did not write ({shown}): refusing to delete anything; move "
            "that out of the folder, or choose another --out")


def lock_holder(path: Path) -> str | None:
    """'process PID on HOST' while another process trains in ``path``; None when no live process holds its lock."""
    lock = path / LOCK
    if not _is_regular(lock):
        return None
    with os.fdopen(os.open(lock, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)) as handle:
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
    _refuse_nesting(path)
    entries = owned_entries(path)
    _refuse_links(path, entries or set())
    holder = lock_holder(path)
    if holder:
        raise ValueError(f"{path} is in use by {holder} (lock {path / LOCK}): wait for it to finish or stop it")
    if resume:
        _check_resumable(path, entries)
    elif entries is not None:
        _check_replaceable(path, entries, overwrite)
    elif path.is_dir() and any(item.name != LOCK for item in path.iterdir()):
        if overwrite:
            raise ValueError(f"--overwrite: {path} is not a run folder (no {MANIFEST}); refusing to clear it: "
                             "choose an empty or new --out")
        raise ValueError(f"{path} is not empty and holds no selfsup run (no {MANIFEST}): choose an empty or new --out")
    _check_writable(path)


def _refuse_nesting(path: Path) -> None:
    """A run inside another would mix their files: refuse an ``--out`` below a run folder (through links too)."""
    above = dict.fromkeys([*Path(os.path.abspath(path)).parents, *Path(os.path.realpath(path)).parents])
    for folder in above:
        if holds_run(folder):
            raise ValueError(f"--out {path} lies inside the run folder {folder}, and a run inside another mixes their "
                             "files: choose an --out outside it")


def _refuse_links(path: Path, entries: set[str]) -> None:
    """One line if a name selfsup reads or writes in ``path`` (or a folder on its way) is a symbolic link."""
    if path.is_dir():
        for name in {LOCK, MANIFEST, *LEGACY_ENTRIES, *entries}:
            refuse_links(path, path / name.rstrip("/"))


def _check_resumable(path: Path, entries: set[str] | None) -> None:
    if not (path / CONFIG).is_file():
        raise ValueError(f"--resume: no run at {path} ({CONFIG} missing); start it without --resume")
    if entries is None:
        raise ValueError(f"--resume: {path} holds no selfsup run (no {MANIFEST}, and not a run of an earlier selfsup: "
                         f"{METRICS} missing or {CONFIG} not selfsup's); start a new run in an empty --out")
    if not (path / CHECKPOINT).is_file():
        raise ValueError(
            f"--resume: {path} has no {CHECKPOINT.as_posix()} (it stopped before its first checkpoint); "
            "start it again with --overwrite"
        )


def _check_replaceable(path: Path, entries: set[str], overwrite: bool) -> None:
    if not overwrite:
        raise ValueError(
            f"{path} already holds a run: add --resume to continue it, --overwrite to replace it, "
            "or choose another --out"
        )
    foreign = survey(path, entries, LOCK).foreign
    if foreign:
        raise ValueError(_foreign_refusal(path, foreign))


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


def _open_lock(file: Path) -> IO[str]:
    """``file`` opened to read and write, never through a symbolic link, nor into a file that has another name."""
    try:
        fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError(link_refusal(file, file.parent)) from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        what = "has another name (a hard link)" if stat.S_ISREG(info.st_mode) else "is not a regular file"
        raise ValueError(f"{file} {what}, so it is not a lock selfsup made and it does not write into it; remove it")
    return os.fdopen(fd, "r+")


def _lock(file: Path) -> IO[str]:
    """An open handle of ``file`` holding its exclusive ``flock``; one line if a live process holds it."""
    while True:
        handle = _open_lock(file)
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
        """A fresh run: selfsup's files of the run it replaces deleted (``overwrite``), a new manifest, then
        ``config.yaml`` and an empty ``metrics.jsonl``."""
        if overwrite:
            self._clear()
        write_manifest(self.path, set())
        atomic_write(self.path / CONFIG, lambda f: f.write(dump(cfg).encode()))
        atomic_write(self.path / METRICS, lambda f: None)
        self._open_tensorboard(cfg)

    def _clear(self) -> None:
        """Delete what the manifest (or a legacy run's known files) lists; refuse, deleting nothing, if the folder
        holds anything else (checked again now that the lock is held: the folder may have changed since)."""
        entries = owned_entries(self.path)
        if entries is None:
            return
        contents = survey(self.path, entries, LOCK)
        if contents.foreign:
            raise ValueError(_foreign_refusal(self.path, contents.foreign))
        for file in contents.files:
            file.unlink()
        for tree in contents.trees:
            shutil.rmtree(tree)
        for folder in contents.parents:
            if not any(folder.iterdir()):
                folder.rmdir()

    def resume(self, cfg: dict[str, Any], history: list[dict[str, Any]], step: int = 0) -> None:
        """A resumed run: a legacy run's files listed in a new manifest, temporary leftovers removed, config
        rewritten, metrics cut back to ``history`` (and TensorBoard's events to the checkpoint's ``step``)."""
        if read_manifest(self.path) is None:
            self._adopt()
        for leftover in [p for p in self.path.rglob(".*") if p.is_file() and is_temporary(p)]:
            leftover.unlink()
        atomic_write(self.path / CONFIG, lambda f: f.write(dump(cfg).encode()))
        rows = "".join(json.dumps(record) + "\n" for record in history)
        atomic_write(self.path / METRICS, lambda f: f.write(rows.encode()))
        self._open_tensorboard(cfg, purge_step=step)

    def _adopt(self) -> None:
        """Write the manifest of a run of an earlier selfsup: the files those versions wrote that are here."""
        entries = _legacy_entries(self.path) or set()
        write_manifest(self.path, entries)
        print(f"selfsup: note: {self.path} was written by an earlier selfsup, without a manifest: its {len(entries)} "
              f"files are now listed in {self.path / MANIFEST}", file=sys.stderr)

    def _open_tensorboard(self, cfg: dict[str, Any], purge_step: int | None = None) -> None:
        if tensorboard.wanted(cfg["train"].get("tensorboard", "auto")):
            folder = self.path / tensorboard.FOLDER
            refuse_links(self.path, folder)
            record_entry(self.path, folder, folder=True)
            self.tensorboard = tensorboard.TensorBoardLog(self.path, purge_step=purge_step)

    def log(self, record: dict[str, Any]) -> None:
        """Append one row to ``metrics.jsonl`` (and write the epoch to TensorBoard)."""
        append(self.path / METRICS, json.dumps(record) + "\n")
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
