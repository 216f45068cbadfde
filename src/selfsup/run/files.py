"""How selfsup writes a file, and the manifest that records what it wrote in a run folder.

Every file is written new, then renamed over its target (``atomic_write``): a temporary file beside the
target, fsynced, given the permissions the umask allows (``0o666 & ~umask``, as ``open`` gives: mkstemp's
0600 would hide a team's runs from each other on a shared cluster), then renamed. A reader never sees half a
file; a rename replaces a symbolic link at the target instead of writing through it; a full disk ends in one
line that says so, with the previous version of the file kept.

Inside a run folder (a folder holding ``selfsup-manifest.json``) a write also

- refuses a symbolic link on its way (``RUN/checkpoints -> /elsewhere``): selfsup never makes links, so one
  there was put by someone else, and writing through it would write outside the folder (rsync does not
  follow a link it was not told to follow either);
- records the file in the manifest before writing it, so that the manifest lists everything selfsup made
  there (a kill in between leaves an entry without a file: harmless) and ``--overwrite`` deletes those files
  and nothing else (``run_folder``).

The manifest is JSON, ``{"selfsup_manifest": 1, "entries": [...]}``; an entry is a path relative to the run
folder: a file (``checkpoints/last.pt``), or, ending in ``/``, a folder whose whole content selfsup wrote
(``tensorboard/``: TensorBoard names its own files). It is rewritten (new file, rename) when an entry is added.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

TEMP_SUFFIX = ".tmp"
MANIFEST = "selfsup-manifest.json"
FORMAT = 1
MAX_MANIFEST_BYTES = 1 << 20  # a run lists tens of files; a larger manifest was not written by selfsup
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(ValueError):
    """A write stopped because its file system is full (or the user's quota spent); the target is unchanged."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(file_object)`` on a new file beside ``path`` and rename it onto ``path``; inside a run folder,
    refuse a symbolic link on the way and record ``path`` in the folder's manifest first."""
    path = Path(path)
    claim_in_run(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_then_rename(path, write)


def claim_in_run(path: str | Path) -> None:
    """Before writing ``path`` inside a run folder: refuse a symbolic link on its way, and list it in the manifest
    (for a writer that renames its own file into place, as ONNX export; ``atomic_write`` calls it)."""
    run = enclosing_run(path)
    if run is not None:
        refuse_links(run, path)
        record_entry(run, path)


def append(file: Path, text: str) -> None:
    """Append ``text`` to ``file``, never through a symbolic link (``O_NOFOLLOW``); a full disk in one line."""
    try:
        with os.fdopen(os.open(file, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC), "a") as handle:
            handle.write(text)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError(link_refusal(file, file.parent)) from None
        if error.errno in FULL_DISK:
            raise DiskFull(f"the disk is full: a line could not be added to {file}; free some space, then continue "
                           "with --resume (the last checkpoint keeps the run's state)") from None
        raise


def is_temporary(path: Path) -> bool:
    """Whether ``path`` is a temporary file ``atomic_write`` left behind when its process was killed."""
    return path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX)


def temporary_of(name: str) -> str | None:
    """The file name whose interrupted write left the temporary file ``name`` (``.NAME.RANDOM.tmp``), else None."""
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return None
    original, dot, _ = name[1 : -len(TEMP_SUFFIX)].rpartition(".")
    return original if dot and original else None


def current_umask() -> int:
    """The process's umask, read from ``/proc`` (Linux 4.7+) without changing it.

    Elsewhere it is set and restored at once: ``os.umask`` can only be read by setting it, and a thread creating a
    file in that instant gets the most private mode (0o077) rather than a more open one."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    previous = os.umask(0o077)
    os.umask(previous)
    return previous


class _RecordingFile:
    """A file object that keeps the ``OSError`` of a failed write: ``torch.save`` turns one into a RuntimeError of
    its own (``inline_container.cc``) that no longer says the disk was full."""

    def __init__(self, file: BinaryIO):
        self._file, self.error = file, None

    def write(self, data: Any) -> int:
        try:
            return self._file.write(data)
        except OSError as error:
            self.error = error
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def _write_then_rename(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """The new file is private (mkstemp) until its mode is set, and reaches ``path`` whole or not at all."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    file = _RecordingFile(os.fdopen(fd, "wb"))
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        write(file)
        file.flush()
        os.fsync(fd)
        file.close()
        os.replace(tmp, path)
    except BaseException as error:
        _close_quietly(file)
        Path(tmp).unlink(missing_ok=True)
        cause = error if isinstance(error, OSError) else file.error
        if cause is not None and cause.errno in FULL_DISK:
            raise DiskFull(
                f"the disk is full ({_free(path.parent)} free on the file system of {path.parent}): {path} was not "
                "written, its previous version (if any) is kept unchanged; free some space and run it again"
            ) from None
        raise


def _close_quietly(file: _RecordingFile) -> None:
    try:
        file.close()
    except OSError:
        pass  # the data that could not be flushed belonged to the temporary file, removed next


def _free(folder: Path) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB"
    except OSError:
        return "no space"


# ---- the manifest ----------------------------------------------------------------------------------------


def enclosing_run(path: str | Path) -> Path | None:
    """The run folder ``path`` lies in: the nearest folder above it holding a manifest; None outside any run."""
    for folder in Path(os.path.abspath(path)).parents:
        if os.path.lexists(folder / MANIFEST):
            return folder
    return None


def read_manifest(run: Path) -> set[str] | None:
    """The entries of ``run``'s manifest; None without one; one line (``ValueError``) if it is not selfsup's."""
    file = run / MANIFEST
    if not os.path.lexists(file):
        return None
    if file.is_symlink() or not file.is_file():
        raise ValueError(f"{file} is {'a symbolic link' if file.is_symlink() else 'not a file'}, which selfsup never "
                         "writes: refusing to use the folder; remove it, or choose another folder")
    damaged = (f"{file} is damaged or was not written by selfsup: refusing to delete or write anything by it; "
               "restore the run's copy, or choose another folder")
    if file.stat().st_size > MAX_MANIFEST_BYTES:
        raise ValueError(damaged)
    try:
        content = json.loads(file.read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise ValueError(damaged) from None
    selfsup = isinstance(content, dict) and content.get("selfsup_manifest") == FORMAT
    entries = content.get("entries") if selfsup else None
    if not isinstance(entries, list) or not all(isinstance(e, str) and is_safe_entry(e) for e in entries):
        raise ValueError(damaged)
    return set(entries)


def is_safe_entry(entry: str) -> bool:
    """Whether ``entry`` names a path inside the run folder: relative, normalised, no ``..``, not the manifest."""
    path = entry.removesuffix("/")
    return (bool(path) and not path.startswith("/") and "\0" not in path and posixpath.normpath(path) == path
            and ".." not in path.split("/") and path != MANIFEST)


def write_manifest(run: Path, entries: set[str]) -> None:
    """Replace ``run``'s manifest by one listing ``entries`` (new file, then rename)."""
    payload = {"selfsup_manifest": FORMAT, "entries": sorted(entries)}
    _write_then_rename(run / MANIFEST, lambda f: f.write((json.dumps(payload, indent=1) + "\n").encode()))


def owns(entries: set[str], relative: str) -> bool:
    """Whether the manifest ``entries`` cover ``relative`` (a file, or a folder given with a trailing ``/``)."""
    return relative in entries or any(e.endswith("/") and relative.startswith(e) for e in entries)


def record_entry(run: Path, path: str | Path, folder: bool = False) -> None:
    """Add ``path`` (inside ``run``; ``folder``: all its content) to ``run``'s manifest unless it is there already."""
    relative = Path(os.path.abspath(path)).relative_to(os.path.abspath(run)).as_posix() + ("/" if folder else "")
    if relative == MANIFEST:
        return
    entries = read_manifest(run) or set()
    if not owns(entries, relative):
        write_manifest(run, entries | {relative})


def refuse_links(run: Path, path: str | Path) -> None:
    """One line (``ValueError``) if ``path``, or a folder between ``run`` and it, is a symbolic link."""
    current = Path(os.path.abspath(run))
    for part in Path(os.path.abspath(path)).relative_to(current).parts:
        current = current / part
        if current.is_symlink():
            raise ValueError(link_refusal(current, run))


def link_refusal(link: Path, run: Path) -> str:
    return (f"{link} is a symbolic link, which selfsup never makes: it does not write through links (the file would "
            f"land outside the run folder {run}); remove the link, or copy the run without it")


@dataclass
class Contents:
    """A run folder's entries, sorted: selfsup's files, its whole folders, the folders its files lie in (deepest
    first), and what is foreign (paths relative to the folder; folders end in ``/``)."""

    files: list[Path] = field(default_factory=list)
    trees: list[Path] = field(default_factory=list)
    parents: list[Path] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)


def survey(path: Path, entries: set[str], bookkeeping: str) -> Contents:
    """Sort what run folder ``path`` holds by its manifest ``entries``, following no symbolic link (selfsup never makes
    one: each is foreign); the manifest and ``bookkeeping`` (the lock) are neither listed nor foreign."""
    contents = Contents()
    _visit(path, "", entries, contents, (MANIFEST, bookkeeping))
    return contents


def _visit(directory: Path, prefix: str, entries: set[str], contents: Contents, skipped: tuple) -> None:
    with os.scandir(directory) as listing:
        items = sorted(listing, key=lambda item: item.name)
    for item in items:
        relative = prefix + item.name
        if item.is_symlink():
            contents.foreign.append(relative)
        elif item.is_dir(follow_symlinks=False):
            if owns(entries, relative + "/"):
                contents.trees.append(Path(item.path))
            elif any(entry.startswith(relative + "/") for entry in entries):
                _visit(Path(item.path), relative + "/", entries, contents, skipped)
                contents.parents.append(Path(item.path))  # after its content: deepest first
            else:
                contents.foreign.append(relative + "/")
        elif owns(entries, relative) or _is_leftover(entries, relative):
            contents.files.append(Path(item.path))
        elif relative not in skipped:
            contents.foreign.append(relative)


def _is_leftover(entries: set[str], relative: str) -> bool:
    """Whether ``relative`` is the temporary file of an interrupted write of an entry (or of the manifest)."""
    folder, name = posixpath.split(relative)
    original = temporary_of(name)
    target = None if original is None else posixpath.join(folder, original)
    return target is not None and (owns(entries, target) or target == MANIFEST)
