"""Decode once: a decoded split is kept as memory-mapped uint8 ``.npy`` files keyed by its source's content.

The key of a file is its size, modification time and the SHA-256 of its first and last MiB (fast, and
a changed archive gets a new key); a directory's key covers every file's relative path, size and
modification time. A cache entry is written to a temporary folder and renamed, so an interrupted
decode never leaves a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

FORMAT_VERSION = 1
EDGE_BYTES = 1 << 20


def default_root() -> Path:
    """Where named datasets are found and downloaded unless ``--data-dir`` says otherwise."""
    return Path(os.environ.get("SELFSUP_DATA", Path.home() / ".cache" / "selfsup")).expanduser()


def cache_dir() -> Path:
    """Where decoded splits are kept ($SELFSUP_CACHE): never inside a data folder, which may be read-only or shared."""
    return Path(os.environ.get("SELFSUP_CACHE", Path.home() / ".cache" / "selfsup" / "decoded")).expanduser()


def source_key(path: Path) -> str:
    """A fast fingerprint of a file or directory tree's content."""
    digest = hashlib.sha256()
    path = Path(path)
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = file.stat()
            line = f"{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
            digest.update(line.encode("utf-8", "surrogateescape"))  # file names need not be UTF-8
        return digest.hexdigest()
    stat = path.stat()
    digest.update(f"{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(EDGE_BYTES))
        if stat.st_size > EDGE_BYTES:
            handle.seek(max(EDGE_BYTES, stat.st_size - EDGE_BYTES))
            digest.update(handle.read(EDGE_BYTES))
    return digest.hexdigest()


def cached(
    name: str, key: dict[str, Any], build: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]]
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and metadata of ``build()``, computed once per ``key`` and memory-mapped afterwards.

    ``build`` returns ({array name: ndarray}, JSON-serialisable metadata).
    """
    digest = hashlib.sha256(json.dumps({**key, "version": FORMAT_VERSION}, sort_keys=True).encode()).hexdigest()[:20]
    entry = cache_dir() / f"{name}-{digest}"
    meta_file = entry / "meta.json"
    if meta_file.exists():
        meta = json.loads(meta_file.read_text())
        arrays = {array: np.load(entry / f"{array}.npy", mmap_mode="c") for array in meta.pop("arrays")}
        return arrays, meta
    arrays, meta = build()
    entry.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        for array, values in arrays.items():
            np.save(staging / f"{array}.npy", values)
        (staging / "meta.json").write_text(json.dumps({**meta, "arrays": list(arrays), "key": key}))
        try:
            staging.rename(entry)
        except OSError:  # another process wrote the same entry first
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return arrays, meta
