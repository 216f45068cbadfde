"""ImageFolder sources: ``root/[split/]class/image`` as a directory, a .tar(.gz), or a directory of split archives.

Images are decoded with Pillow, converted to RGB, resized (shorter side) and centre-cropped to a square
of ``image_size`` (default: the shorter side most images have, among up to ``SIZE_SAMPLE`` spread over
the source; a source of mixed sizes says so on stderr), and cached as uint8 (``selfsup.data.cache``).
Split folders are ``train`` and ``test`` (or ``val``). A source with one split only holds out every
``HOLDOUT``-th image (in path order) as its test split. A source with one class only, or one image,
trains but warns: its kNN and linear scores say nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from tqdm import tqdm

from selfsup.data.base import ArrayDataset
from selfsup.data.cache import cached, source_key
from selfsup.data.images import (
    IMAGE_SUFFIXES,
    SPLIT_DIRS,
    channel_stats,
    common_side,
    decode_image,
    list_images,
    printable,
    read_image_file,
    select_split,
    split_and_class,
    split_source,
    warn_once,
)
from selfsup.data.stream import ImageFiles, list_streamed_folder

STREAM_ABOVE_BYTES = 8 * 2**30  # decoded size above which a folder is streamed rather than cached


def warn_if_degenerate(source: Path, classes: list[str], count: int, split: str) -> None:
    """One stderr line (once per source) for data on which training runs but scores mean nothing."""
    problem = None
    if count == 1:
        problem = f"its {split} split holds a single image: there is nothing to contrast it with"
    elif len(classes) == 1:
        problem = (f"it has a single class ('{classes[0]}'): kNN and linear-probe scores will be 1.0 and say nothing; "
                   "put the images in one folder per class")
    if problem:
        warn_once(f"selfsup: warning: {printable(source)}: {printable(problem)}")


def _decode_all(
    chosen, classes: list[str], image_size: int | None, on_error: str, progress: bool, source: Path
) -> tuple[np.ndarray, np.ndarray, int]:
    images, labels, skipped, first_bad = [], [], 0, None
    index = {name: i for i, name in enumerate(classes)}
    image_size = common_side([read for _, read in chosen], source, image_size)
    bar = tqdm(chosen, desc=f"decoding {source.name}", unit="img", disable=not progress, mininterval=1.0)
    for name, read in bar:
        try:
            array = decode_image(read(), image_size)
        except (OSError, ValueError, SyntaxError) as err:
            if on_error == "stop":
                raise ValueError(f"cannot read image {printable(name)} in {printable(source)} ({err}); "
                                 "remove it or set data.on_error=skip") from None
            skipped, first_bad = skipped + 1, first_bad or name
            continue
        if image_size is None:
            image_size = min(array.shape[:2])
            if array.shape[0] != array.shape[1]:
                array = decode_image(read(), image_size)
        images.append(array)
        labels.append(index[split_and_class(PurePosixPath(name).parts)[1]])
    if skipped:
        print(f"skipped {skipped} unreadable image(s) in {printable(source)} (first: {printable(first_bad)})",
              file=sys.stderr)
    if not images:
        raise ValueError(f"no readable images in {printable(source)}: expected [split/]class/image files")
    data = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
    return data, np.asarray(labels, dtype=np.int64), skipped


def load_image_folder(
    path: str | Path,
    split: str = "train",
    image_size: int | None = None,
    on_error: str = "stop",
    limit: int | None = None,
    progress: bool = True,
    name: str | None = None,
    stream: bool | None = None,
    workers: int | None = None,
) -> ArrayDataset:
    """An ImageFolder split as uint8 [N, 3, S, S]; decoded once, then read from the cache (``cache_dir()``).

    on_error: 'stop' raises on the first unreadable image (naming it); 'skip' leaves it out and
    reports how many were skipped. ``limit`` decodes only that many images, evenly spread over the
    split (no cache; for tests and benchmarks).
    stream: decode batch by batch in ``workers`` DataLoader processes instead of caching
    (``selfsup.data.stream``); None streams a directory whose decoded copy would exceed
    ``STREAM_ABOVE_BYTES``. Archives cannot be streamed (no random access): extract them first.
    """
    if split not in SPLIT_DIRS:
        raise ValueError(f"unknown split '{split}'; use one of {', '.join(SPLIT_DIRS)}")
    if on_error not in ("stop", "skip"):
        raise ValueError(f"on_error must be 'stop' or 'skip', not '{on_error}'")
    source = split_source(Path(path).expanduser(), split)
    name = name or source.name.split(".")[0]
    if stream is None:
        stream = source.is_dir() and _decoded_bytes(source, image_size) > STREAM_ABOVE_BYTES
    if stream:
        return _load_streamed(source, split, image_size, on_error, workers, progress, name)

    def build():
        entries = list_images(source)
        if not entries:
            raise ValueError(f"no images found in {printable(source)}: expected [split/]class/image files (.jpg, .png, ...)")
        chosen, classes = select_split(entries, split, source)
        chosen = chosen[:: max(1, len(chosen) // limit)][:limit] if limit else chosen
        data, labels, skipped = _decode_all(chosen, classes, image_size, on_error, progress, source)
        mean, std = channel_stats(data)
        return {"data": data, "labels": labels}, {"classes": classes, "mean": mean, "std": std, "skipped": skipped}

    if limit:
        arrays, meta = build()
    else:
        key = {"source": str(source.resolve()), "content": source_key(source), "split": split,
               "image_size": image_size, "on_error": on_error, "side": "most common"}
        arrays, meta = cached(f"folder-{name}-{split}", key, build)
    warn_if_degenerate(source, list(meta["classes"]), len(arrays["labels"]), split)
    return ArrayDataset(
        data=torch.from_numpy(arrays["data"]),
        labels=torch.from_numpy(arrays["labels"]),
        classes=list(meta["classes"]),
        name=name,
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
    )


def _decoded_bytes(folder: Path, image_size: int | None) -> int:
    """Estimated size of the decoded uint8 copy of every image under ``folder`` (side: ``image_size`` or the first image's)."""
    files = [p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not files:
        return 0
    if image_size is None:
        try:
            image_size = min(decode_image(read_image_file(files[0]), None).shape[:2])
        except (OSError, ValueError, SyntaxError):
            return 0
    return len(files) * 3 * image_size * image_size


def _load_streamed(
    source: Path, split: str, image_size: int | None, on_error: str, workers: int | None, progress: bool, name: str
) -> ArrayDataset:

    if not source.is_dir():
        raise ValueError(
            f"{printable(source)} is an archive, and streaming reads files in random order: extract it (tar -xf) and pass "
            "the folder, or set data.stream=false to decode it once into the cache"
        )
    key = {"source": str(source.resolve()), "content": source_key(source), "split": split, "image_size": image_size}
    arrays, meta = cached(f"stream-{name}-{split}", key, lambda: list_streamed_folder(source, split, image_size, progress))
    return ArrayDataset(
        data=ImageFiles(source, meta["names"], meta["size"], on_error, workers),
        labels=torch.from_numpy(np.asarray(arrays["labels"])),
        classes=list(meta["classes"]),
        name=name,
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
    )


