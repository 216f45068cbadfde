"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from the python-format folder, its official tar.gz, or an ImageFolder.

Looked for in ``root`` (and ``root/<name>``) in this order: the extracted python folder
(``cifar-10-batches-py``), the official archive (``cifar-10-python.tar.gz``, read without extracting),
an ImageFolder (``root/<name>/{train,test}`` as folders or ``.tar.gz``); otherwise the official
archive is downloaded into ``root`` and checked against its MD5.
"""

from __future__ import annotations

import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from selfsup.data.base import ArrayDataset
from selfsup.data.cache import cached, source_key
from selfsup.data.download import ARCHIVES, fetch
from selfsup.data.folder import load_image_folder

PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class CifarFormat:
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    meta_file: str
    names_key: bytes
    mean: tuple[float, float, float]  # of the training set, in [0, 1]
    std: tuple[float, float, float]


FORMATS = {
    "cifar10": CifarFormat(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), b"labels",
        "batches.meta", b"label_names", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": CifarFormat(
        "cifar-100-python", ("train",), ("test",), b"fine_labels", "meta", b"fine_label_names",
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
    ),
}


def _unpickle(raw: bytes, name: str) -> dict:
    try:
        return pickle.loads(raw, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        raise ValueError(f"{name} is not a readable CIFAR python-format file ({err}); download it again") from None


def _batch_arrays(batch: dict, fmt: CifarFormat, name: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != PIXELS:
        raise ValueError(
            f"{name}: images have {data.shape[-1]} values, expected 3 channels x 32 x 32 = {PIXELS}; "
            "this is not a CIFAR python-format batch"
        )
    return data.reshape(-1, 3, 32, 32), np.asarray(batch[fmt.label_key], dtype=np.int64)


def _assemble(read, fmt: CifarFormat, split: str) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays of a split from ``read(filename) -> bytes`` of the python-format files."""
    files = fmt.train_files if split in ("pretrain", "train") else fmt.test_files
    parts = [_batch_arrays(_unpickle(read(f), f), fmt, f) for f in files]
    meta = _unpickle(read(fmt.meta_file), fmt.meta_file)
    classes = [c.decode() for c in meta[fmt.names_key]]
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return {"data": data, "labels": labels}, {"classes": classes}


def _from_archive(archive: Path, fmt: CifarFormat, split: str, name: str):
    def build():
        try:
            with tarfile.open(archive, "r:gz") as tar:
                files = {Path(m.name).name: tar.extractfile(m).read() for m in tar if m.isfile()}
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            raise ValueError(
                f"{archive} is truncated or not a valid tar.gz ({err}); delete it and download again"
            ) from None

        def read(filename: str) -> bytes:
            if filename not in files:
                raise ValueError(f"{archive} has no {filename}: it is not the {name} python-format archive")
            return files[filename]

        return _assemble(read, fmt, split)

    key = {"source": str(archive.resolve()), "content": source_key(archive), "split": split}
    return cached(f"{name}-{split}", key, build)


def _from_folder(folder: Path, fmt: CifarFormat, split: str):
    def read(filename: str) -> bytes:
        path = folder / filename
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the {fmt.folder} folder is incomplete")
        return path.read_bytes()

    return _assemble(read, fmt, split)


def load_cifar(
    name: str, root: str | Path, split: str = "train", on_error: str = "stop", progress: bool = True
) -> ArrayDataset:
    """A CIFAR split as uint8 [N, 3, 32, 32]; 'pretrain' is the training set."""
    fmt = FORMATS[name]
    root = Path(root).expanduser()
    archive_name = ARCHIVES[name].filename
    arrays = meta = None
    for base in (root, root / name):
        if (base / fmt.folder).is_dir():
            arrays, meta = _from_folder(base / fmt.folder, fmt, split)
            break
        if (base / archive_name).is_file():
            arrays, meta = _from_archive(base / archive_name, fmt, split, name)
            break
    if arrays is None and (root / name).is_dir():
        folder = load_image_folder(root / name, split, image_size=32, on_error=on_error, progress=progress, name=name)
        folder.mean, folder.std = fmt.mean, fmt.std
        return folder
    if arrays is None:
        arrays, meta = _from_archive(fetch(name, root, progress), fmt, split, name)
    return ArrayDataset(
        data=torch.from_numpy(arrays["data"]),
        labels=torch.from_numpy(arrays["labels"]),
        classes=list(meta["classes"]),
        name=name,
        mean=fmt.mean,
        std=fmt.std,
    )
