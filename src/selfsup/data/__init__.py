"""Datasets (uint8 tensors or files), their decoding and caching, and batched views on the device.

``load_dataset(spec, root, split)`` turns a data SPEC (DESIGN.md) into an ``ArrayDataset``:
``digits``, ``cifar10``, ``cifar100``, ``stl10``, ``folder:PATH``, ``ucr:NAME``, ``wav:DIR``.
Splits: 'pretrain' (what self-supervised training uses: train, for STL-10 train + unlabeled, for a folder
without train/ and test/ folders every image), 'train' (labelled training set, for kNN and the linear probe),
'test', and 'all' (every sample once: a folder's images, other data's train then test; ``selfsup embed``).
"""

from __future__ import annotations

from pathlib import Path

from selfsup.data.base import ArrayDataset, concatenate, is_colourless, iterate_batches, single_channel
from selfsup.data.cache import default_root

__all__ = ["ArrayDataset", "iterate_batches", "load_dataset", "default_root", "SPLITS"]

SPLITS = ("pretrain", "train", "test", "all")
SPECS = "digits, cifar10, cifar100, stl10, folder:PATH, ucr:NAME or wav:DIR"


def load_dataset(
    spec: str,
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | None = None,
    on_error: str = "stop",
    progress: bool = True,
    stream: bool | None = None,
    workers: int | None = None,
) -> ArrayDataset:
    """Load one split of a data SPEC; named datasets are found in (or downloaded to) ``root``.

    image_size: side images of a ``folder:`` source are resized to (default: the first image's).
    on_error: 'stop' on the first unreadable image file, or 'skip' it and report the count.
    stream, workers: a ``folder:`` directory decoded batch by batch in ``workers`` DataLoader
    processes instead of cached (None: only when its decoded copy would be large).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
    root = Path(root).expanduser() if root else default_root()
    kind, _, arg = spec.partition(":")
    options = {"image_size": image_size, "on_error": on_error, "progress": progress, "stream": stream, "workers": workers}
    if split == "all" and not (kind == "folder" and arg):
        return concatenate({part: load_dataset(spec, root, part, **options) for part in ("train", "test")})
    if spec == "digits":
        from selfsup.data.digits import load_digits

        return load_digits("test" if split == "test" else "train")
    if spec in ("cifar10", "cifar100"):
        from selfsup.data.cifar import load_cifar

        return load_cifar(spec, root, split, on_error=on_error, progress=progress)
    if spec == "stl10":
        from selfsup.data.stl10 import load_stl10

        return load_stl10(root, split, progress=progress)
    if kind == "folder" and arg:
        from selfsup.data.folder import load_image_folder

        images = load_image_folder(
            arg, split, image_size=image_size, on_error=on_error, progress=progress, stream=stream, workers=workers
        )
        return single_channel(images) if is_colourless(images) else images  # grayscale files decode as RGB
    if kind == "ucr" and arg:
        from selfsup.data.sequences import load_ucr

        return load_ucr(arg, "train" if split == "pretrain" else split, root)
    if kind == "wav" and arg:
        from selfsup.data.sequences import load_wav_folder

        return load_wav_folder(arg, "train" if split == "pretrain" else split, on_error=on_error)
    raise ValueError(f"unknown dataset '{spec}'; use {SPECS}")
