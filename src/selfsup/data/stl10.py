"""STL-10 (Coates, Ng, Lee 2011): 96x96 colour images, 5,000 labelled train, 8,000 test, 100,000 unlabelled.

Read from the binary format (``stl10_binary/{train,test,unlabeled}_X.bin``), as a folder or inside the
official ``stl10_binary.tar.gz`` (downloaded when missing, and checked against its published MD5 before
it is read). Each image is stored as
3 x 96 x 96 bytes in column-major order. 'pretrain' is train + unlabeled (labels -1 for the latter).
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from selfsup.data.base import ArrayDataset
from selfsup.data.cache import cached, source_key
from selfsup.data.download import ARCHIVES, fetch, verify

SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
CHUNK_IMAGES = 4096
SPLIT_FILES = {
    "train": [("train_X.bin", "train_y.bin")],
    "test": [("test_X.bin", "test_y.bin")],
    "pretrain": [("train_X.bin", "train_y.bin"), ("unlabeled_X.bin", None)],
}
MEAN = (0.4467, 0.4398, 0.4066)  # of the train + unlabeled images, in [0, 1]
STD = (0.2603, 0.2566, 0.2713)


def _read_images(stream: BinaryIO, size: int, name: str) -> np.ndarray:
    if size % IMAGE_BYTES:
        raise ValueError(f"{name} has {size} bytes, not a multiple of 3 channels x 96 x 96: not an STL-10 image file")
    out = np.empty((size // IMAGE_BYTES, 3, SIDE, SIDE), dtype=np.uint8)
    for start in range(0, len(out), CHUNK_IMAGES):
        count = min(CHUNK_IMAGES, len(out) - start)
        raw = stream.read(count * IMAGE_BYTES)
        if len(raw) != count * IMAGE_BYTES:
            raise ValueError(f"{name} is truncated; download it again")
        out[start : start + count] = np.frombuffer(raw, np.uint8).reshape(count, 3, SIDE, SIDE).transpose(0, 1, 3, 2)
    return out


def _build(open_member, split: str):
    images, labels = [], []
    for x_file, y_file in SPLIT_FILES[split]:
        stream, size = open_member(x_file)
        with stream:
            images.append(_read_images(stream, size, x_file))
        if y_file is None:
            labels.append(np.full(len(images[-1]), -1, dtype=np.int64))
        else:
            stream, _ = open_member(y_file)
            with stream:
                labels.append(np.frombuffer(stream.read(), np.uint8).astype(np.int64) - 1)
        if len(labels[-1]) != len(images[-1]):
            raise ValueError(f"{x_file} has {len(images[-1])} images but {y_file} {len(labels[-1])} labels")
    stream, _ = open_member("class_names.txt")
    with stream:
        classes = stream.read().decode().split()
    return {"data": np.concatenate(images), "labels": np.concatenate(labels)}, {"classes": classes}


def load_stl10(root: str | Path, split: str = "train", progress: bool = True) -> ArrayDataset:
    """An STL-10 split as uint8 [N, 3, 96, 96], decoded once into the cache."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split '{split}' for stl10; use {', '.join(SPLIT_FILES)}")
    root = Path(root).expanduser()
    folder = next((p for p in (root / "stl10_binary", root / "stl10" / "stl10_binary") if p.is_dir()), None)
    if folder is not None:

        def open_member(filename: str):
            path = folder / filename
            if not path.exists():
                raise FileNotFoundError(f"{path} is missing: the stl10_binary folder is incomplete")
            return open(path, "rb"), path.stat().st_size

        source, build = folder, lambda: _build(open_member, split)
    else:
        archive = ARCHIVES["stl10"].filename
        source = next((p for p in (root / archive, root / "stl10" / archive) if p.is_file()), None)
        source = source or fetch("stl10", root, progress)

        def build():
            verify(source, ARCHIVES["stl10"].md5, "the STL-10 binary archive")
            try:
                with tarfile.open(source, "r:gz") as tar:
                    members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}

                    def open_member(filename: str):
                        if filename not in members:
                            raise ValueError(f"{source} has no {filename}: it is not the STL-10 binary archive")
                        return tar.extractfile(members[filename]), members[filename].size

                    return _build(open_member, split)
            except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
                raise ValueError(
                    f"{source} is truncated or not a valid tar.gz ({err}); delete it and download again"
                ) from None

    key = {"source": str(source.resolve()), "content": source_key(source), "split": split}
    arrays, meta = cached(f"stl10-{split}", key, build)
    return ArrayDataset(
        data=torch.from_numpy(arrays["data"]),
        labels=torch.from_numpy(arrays["labels"]),
        classes=list(meta["classes"]),
        name="stl10",
        mean=MEAN,
        std=STD,
    )
