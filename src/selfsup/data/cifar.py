"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009) from the python-format folder, its official tar.gz, or an ImageFolder.

Looked for in ``root`` (and ``root/<name>``) in this order: the extracted python folder
(``cifar-10-batches-py``), the official archive (``cifar-10-python.tar.gz``, read without extracting),
an ImageFolder (``root/<name>/{train,test}`` as folders or ``.tar.gz``); otherwise the official
archive is downloaded into ``root``.

The python-format batches are pickles. Before one is read, the archive (or, in an extracted folder,
each batch file) is checked against its published MD5, and the batch is then unpickled by a restricted
unpickler that admits plain numeric numpy arrays, lists, dicts and strings only: a tampered file is
refused before any of its content runs, even one whose checksum matched.
"""

from __future__ import annotations

import hashlib
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from selfsup.data.base import ArrayDataset
from selfsup.data.cache import cached, source_key
from selfsup.data.download import ARCHIVES, fetch, verify
from selfsup.data.folder import load_image_folder
from selfsup.data.restricted_pickle import RefusedPickle, restricted_loads

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
    md5: dict[str, str]  # of each file of the extracted folder, as torchvision's CIFAR10/CIFAR100 list them


FORMATS = {
    "cifar10": CifarFormat(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), b"labels",
        "batches.meta", b"label_names", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        {
            "data_batch_1": "c99cafc152244af753f735de768cd75f", "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751", "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb", "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
    ),
    "cifar100": CifarFormat(
        "cifar-100-python", ("train",), ("test",), b"fine_labels", "meta", b"fine_label_names",
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
        {
            "train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
    ),
}


def _unpickle(raw: bytes, name: str) -> dict:
    try:
        batch = restricted_loads(raw)
    except RefusedPickle as refused:
        raise ValueError(
            f"{name} was refused: {refused}; a CIFAR batch never does, so delete it and download the dataset "
            "again from its official source"
        ) from None
    except ValueError as err:  # malformed: restricted_loads says how, in one line
        raise ValueError(f"{name} is not a readable CIFAR python-format file ({err}); download it again") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{name} holds a {type(batch).__name__}, not a CIFAR python-format batch; download it again")
    return batch


def _batch_arrays(batch: dict, fmt: CifarFormat, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 3, 32, 32] and labels int64 [N] of one batch; anything else in their place is refused."""
    missing = [key.decode() for key in (b"data", fmt.label_key) if key not in batch]
    if missing:
        raise ValueError(f"{name} has no {' or '.join(missing)}: it is not a CIFAR python-format batch")
    data = batch[b"data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise ValueError(f"{name}: its images are not a 2-D uint8 array; this is not a CIFAR python-format batch")
    if data.shape[1] != PIXELS:
        raise ValueError(
            f"{name}: images have {data.shape[1]} values, expected 3 channels x 32 x 32 = {PIXELS}; "
            "this is not a CIFAR python-format batch"
        )
    labels = batch[fmt.label_key]
    if not (isinstance(labels, list) and len(labels) == len(data) and all(type(v) is int and 0 <= v < 2**16 for v in labels)):
        raise ValueError(f"{name}: its labels are not a list of {len(data)} whole numbers, one per image; "
                         "this is not a CIFAR python-format batch")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _class_names(meta: dict, fmt: CifarFormat) -> list[str]:
    names = meta.get(fmt.names_key)
    if not (isinstance(names, list) and names and all(isinstance(n, bytes) for n in names)):
        raise ValueError(f"{fmt.meta_file} has no list of {fmt.names_key.decode()}: it is not CIFAR's metadata file")
    return [n.decode("utf-8", "replace") for n in names]


def _assemble(read, fmt: CifarFormat, split: str) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays of a split from ``read(filename) -> bytes`` of the python-format files."""
    files = fmt.train_files if split in ("pretrain", "train") else fmt.test_files
    parts = [_batch_arrays(_unpickle(read(f), f), fmt, f) for f in files]
    classes = _class_names(_unpickle(read(fmt.meta_file), fmt.meta_file), fmt)
    data = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if len(labels) and labels.max() >= len(classes):
        raise ValueError(f"labels outside 0..{len(classes) - 1} in {', '.join(files)}: not a CIFAR python-format batch")
    return {"data": data, "labels": labels}, {"classes": classes}


def _from_archive(archive: Path, fmt: CifarFormat, split: str, name: str):
    def build():
        verify(archive, ARCHIVES[name].md5, f"the {name} python-format archive")
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
        raw = path.read_bytes()
        verify(path, fmt.md5[filename], f"the CIFAR file {filename}", found=hashlib.md5(raw).hexdigest())
        return raw

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
