"""ImageFolder sources: ``root/[split/]class/image`` as a directory, a .tar(.gz), or a directory of split archives.

Images are decoded with Pillow, converted to RGB, resized (shorter side) and centre-cropped to a square
of ``image_size`` (default: the shorter side most images have, among up to ``SIZE_SAMPLE`` spread over
the source; a source of mixed sizes says so on stderr), and cached as uint8 (``selfsup.data.cache``).
Split folders are ``train`` and ``test`` (or ``val``). A source without them pre-trains on every image, and
kNN and the linear probe hold out a fixed 1 in ``HOLDOUT`` images of each class (``images.select_split``);
the split 'all' is every image. A source with fewer than two class folders is unlabelled (labels -1): runs on
it report collapse monitors instead of kNN. A split of one image trains but warns.
Each split keeps its files' relative paths (``ArrayDataset.paths``), which ``selfsup embed`` writes out.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from selfsup.data.base import ArrayDataset, concatenate
from selfsup.data.cache import cached, source_key
from selfsup.data.images import (
    IMAGE_SUFFIXES,
    SPLIT_DIRS,
    channel_stats,
    common_side,
    decode_image,
    labels_of,
    list_images,
    printable,
    read_image_file,
    select_split,
    split_source,
    warn_once,
)
from selfsup.data.stream import ImageFiles, list_streamed_folder

ANNOUNCE_AFTER_S = 2.0  # decoding that takes longer says so in a log
STREAM_ABOVE_BYTES = 8 * 2**30  # decoded size above which a folder is streamed rather than cached
LISTING = 2  # in cache keys: the version of how a source is split and labelled (2: flat folders pre-train on all)


def warn_if_single(source: Path, count: int, split: str) -> None:
    """One stderr line (once per source) for a split of one image: training runs, with nothing to contrast it with."""
    if count == 1:
        warn_once(f"selfsup: warning: {printable(source)}: its {split} split holds a single image: there is nothing "
                  "to contrast it with")


def _decode_all(
    chosen, image_size: int | None, on_error: str, progress: bool, source: Path
) -> tuple[np.ndarray, list[str], int]:
    """uint8 [N, 3, S, S] of the readable images of ``chosen``, their names, and how many were skipped.

    A bar on a terminal (``progress``); otherwise, once decoding has taken ``ANNOUNCE_AFTER_S``, a start line and
    at the end a line with its time (a log then says what the wait was, and a quick load says nothing)."""
    images, names, skipped, first_bad = [], [], 0, None
    image_size = common_side([read for _, read in chosen], source, image_size)
    bar = tqdm(chosen, desc=f"decoding {source.name}", unit="img", disable=not progress, mininterval=1.0)
    started, announced = time.perf_counter(), progress
    for name, read in bar:
        if not announced and time.perf_counter() - started > ANNOUNCE_AFTER_S:
            print(f"selfsup: decoding {len(chosen)} images of {printable(source)} (once: then cached) ...",
                  file=sys.stderr, flush=True)
            announced = True
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
        names.append(name)
    if announced and not progress:
        print(f"selfsup: decoded {len(images)} images of {printable(source)} in {time.perf_counter() - started:.0f} s",
              file=sys.stderr)
    if skipped:
        print(f"skipped {skipped} unreadable image(s) in {printable(source)} (first: {printable(first_bad)})",
              file=sys.stderr)
    if not images:
        raise ValueError(f"no readable images in {printable(source)}: expected [split/]class/image files")
    data = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
    return data, names, skipped


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
    if split == "all" and split_source(Path(path).expanduser(), "train") != Path(path).expanduser():
        options = {"image_size": image_size, "on_error": on_error, "limit": limit, "progress": progress, "name": name}
        return concatenate({s: load_image_folder(path, s, **options) for s in ("train", "test")})  # split archives
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
        selection = select_split(entries, split, source, whole=source != Path(path).expanduser())
        chosen = selection.entries
        if limit:
            chosen = chosen[:: max(1, len(chosen) // limit)][:limit]
        data, names, skipped = _decode_all(chosen, image_size, on_error, progress, source)
        mean, std = channel_stats(data)
        meta = {"classes": selection.classes, "mean": mean, "std": std, "skipped": skipped, "names": names,
                "rule": selection.rule, "unlabelled": selection.unlabelled}
        return {"data": data, "labels": labels_of(names, selection.classes)}, meta

    if limit:
        arrays, meta = build()
    else:
        key = {"source": str(source.resolve()), "content": source_key(source), "split": split,
               "image_size": image_size, "on_error": on_error, "side": "most common", "listing": LISTING}
        arrays, meta = cached(f"folder-{name}-{split}", key, build)
    warn_if_single(source, len(arrays["labels"]), split)
    return _dataset(source, name, torch.from_numpy(arrays["data"]), arrays["labels"], meta)


def _dataset(source: Path, name: str, data, labels: np.ndarray, meta: dict) -> ArrayDataset:
    """The ArrayDataset of a listed (and, unless streamed, decoded) split, with its files and how it was chosen."""
    return ArrayDataset(
        data=data,
        labels=torch.from_numpy(np.asarray(labels)),
        classes=list(meta["classes"]),
        name=name,
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        paths=list(meta["names"]),
        source=printable(source),
        split_rule=meta["rule"],
        unlabelled=meta["unlabelled"],
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
    key = {"source": str(source.resolve()), "content": source_key(source), "split": split, "image_size": image_size,
           "listing": LISTING}
    arrays, meta = cached(f"stream-{name}-{split}", key, lambda: list_streamed_folder(source, split, image_size, progress))
    return _dataset(source, name, ImageFiles(source, meta["names"], meta["size"], on_error, workers), arrays["labels"],
                    meta)


