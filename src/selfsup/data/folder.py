"""ImageFolder sources: ``root/[split/]class/image`` as a directory, a .tar(.gz), or a directory of split archives.

Images are decoded with Pillow, converted to RGB, resized (shorter side) and centre-cropped to a square
of ``image_size`` (default: the shorter side most images have, among up to ``SIZE_SAMPLE`` spread over
the source; a source of mixed sizes says so on stderr), and cached as uint8 (``selfsup.data.cache``).
Split folders are ``train`` and ``test`` (or ``val``). A source with one split only holds out every
``HOLDOUT``-th image (in path order) as its test split. A source with one class only, or one image,
trains but warns: its kNN and linear scores say nothing.
"""

from __future__ import annotations

import io
import sys
import tarfile
import zlib
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from selfsup.data.base import ArrayDataset
from selfsup.data.cache import cached, source_key

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
SPLIT_DIRS = {"pretrain": ("train",), "train": ("train",), "test": ("test", "val")}
HOLDOUT = 10
SIZE_SAMPLE = 256  # images whose size (header only) picks the side of a source of mixed sizes
_warned: set[str] = set()  # sources already warned about in this process (every split is loaded)
STREAM_ABOVE_BYTES = 8 * 2**30  # decoded size above which a folder is streamed rather than cached


def is_archive(path: Path) -> bool:
    return path.name.endswith(ARCHIVE_SUFFIXES)


def split_source(path: Path, split: str) -> Path:
    """The file or folder that holds ``split``: ``path`` itself, or its ``<split>.tar.gz`` sibling archive."""
    if not path.exists():
        raise FileNotFoundError(f"data path {path} does not exist")
    if path.is_dir():
        for name in SPLIT_DIRS[split]:
            for suffix in ARCHIVE_SUFFIXES:
                if (path / f"{name}{suffix}").is_file():
                    return path / f"{name}{suffix}"
    return path


def split_and_class(parts: tuple[str, ...]) -> tuple[str | None, str]:
    split = parts[-3] if len(parts) >= 3 and parts[-3] in {"train", "test", "val"} else None
    return split, parts[-2] if len(parts) >= 2 else ""


def list_images(source: Path) -> list[tuple[str, Callable[[], bytes]]]:
    """(relative POSIX path, reader of its bytes) for every image file, in path order."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        return [(p.relative_to(source).as_posix(), p.read_bytes) for p in files]
    if not is_archive(source):
        raise ValueError(f"{source} is neither a folder nor a .tar/.tar.gz archive of images")
    contents = {}
    try:
        with tarfile.open(source, "r:*") as archive:
            for member in archive:  # one sequential pass: a gzip stream cannot seek back cheaply
                if member.isfile() and PurePosixPath(member.name).suffix.lower() in IMAGE_SUFFIXES:
                    contents[member.name] = archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise ValueError(f"{source} is truncated or not a valid tar archive ({err}); download or copy it again") from None
    return [(name, lambda data=contents[name]: data) for name in sorted(contents)]


def select_split(entries: list[tuple[str, Callable[[], bytes]]], split: str, source: Path):
    """The entries of ``split`` and the sorted class names of the whole source."""
    keyed = [(PurePosixPath(name).parts, name, read) for name, read in entries]
    classes = sorted({split_and_class(parts)[1] for parts, _, _ in keyed})
    splits = {split_and_class(parts)[0] for parts, _, _ in keyed}
    wanted = set(SPLIT_DIRS[split])
    if splits & wanted:
        chosen = [(name, read) for parts, name, read in keyed if split_and_class(parts)[0] in wanted]
    elif len(splits) == 1:
        held_out = split == "test"
        chosen = [(name, read) for i, (_, name, read) in enumerate(keyed) if (i % HOLDOUT == HOLDOUT - 1) == held_out]
    else:
        raise ValueError(f"{source} has splits {sorted(s for s in splits if s)} but no '{split}' split")
    return chosen, classes


def decode_image(data: bytes, size: int | None) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        if size is not None and image.size != (size, size):
            scale = size / min(image.size)
            resized = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
            image = image.resize(resized, Image.BICUBIC)
            left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
            image = image.crop((left, top, left + size, top + size))
        return np.asarray(image)


def _image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image's header, or None if it is unreadable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (OSError, ValueError, SyntaxError):
        return None


def common_side(reads: list[Callable[[], bytes]], source: Path, image_size: int | None) -> int | None:
    """``image_size``, or the shorter side most images have (among up to ``SIZE_SAMPLE``); mixed sizes are logged."""
    sample = reads[:: max(1, len(reads) // SIZE_SAMPLE)][:SIZE_SAMPLE]
    sizes = Counter(size for size in (_image_size(read()) for read in sample) if size is not None)
    if not sizes:
        return image_size
    side = image_size or min(sizes.most_common(1)[0][0])
    if len(sizes) > 1 and str(source) not in _warned:
        _warned.add(str(source))
        seen = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(4)) + (", ..." if len(sizes) > 4 else "")
        why = "data.image_size" if image_size else "the size most of them have; set data.image_size to choose"
        print(f"selfsup: {source} holds images of {len(sizes)} sizes ({seen} among {len(sample)} sampled): "
              f"all are resized and centre-cropped to {side}x{side} ({why})", file=sys.stderr)
    return side


def warn_if_degenerate(source: Path, classes: list[str], count: int, split: str) -> None:
    """One stderr line (once per source) for data on which training runs but scores mean nothing."""
    problem = None
    if count == 1:
        problem = f"its {split} split holds a single image: there is nothing to contrast it with"
    elif len(classes) == 1:
        problem = (f"it has a single class ('{classes[0]}'): kNN and linear-probe scores will be 1.0 and say nothing; "
                   "put the images in one folder per class")
    if problem and str(source) + problem not in _warned:
        _warned.add(str(source) + problem)
        print(f"selfsup: warning: {source}: {problem}", file=sys.stderr)


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
                raise ValueError(
                    f"cannot read image {name} in {source} ({err}); remove it or set data.on_error=skip"
                ) from None
            skipped, first_bad = skipped + 1, first_bad or name
            continue
        if image_size is None:
            image_size = min(array.shape[:2])
            if array.shape[0] != array.shape[1]:
                array = decode_image(read(), image_size)
        images.append(array)
        labels.append(index[split_and_class(PurePosixPath(name).parts)[1]])
    if skipped:
        print(f"skipped {skipped} unreadable image(s) in {source} (first: {first_bad})", file=sys.stderr)
    if not images:
        raise ValueError(f"no readable images in {source}: expected [split/]class/image files")
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
            raise ValueError(f"no images found in {source}: expected [split/]class/image files (.jpg, .png, ...)")
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
            image_size = min(decode_image(files[0].read_bytes(), None).shape[:2])
        except (OSError, ValueError, SyntaxError):
            return 0
    return len(files) * 3 * image_size * image_size


def _load_streamed(
    source: Path, split: str, image_size: int | None, on_error: str, workers: int | None, progress: bool, name: str
) -> ArrayDataset:
    from selfsup.data.stream import ImageFiles, list_streamed_folder

    if not source.is_dir():
        raise ValueError(
            f"{source} is an archive, and streaming reads files in random order: extract it (tar -xf) and pass "
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


def channel_stats(data: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units of uint8 [N, C, H, W], in chunks to bound memory."""
    channels = data.shape[1]
    sums, squares = np.zeros(channels), np.zeros(channels)
    for start in range(0, len(data), 4096):
        chunk = data[start : start + 4096].astype(np.float64)
        sums += chunk.sum(axis=(0, 2, 3))
        squares += (chunk**2).sum(axis=(0, 2, 3))
    count = data.shape[0] * data.shape[2] * data.shape[3]
    mean = sums / count
    return (mean / 255.0).tolist(), (np.sqrt(np.maximum(squares / count - mean**2, 0.0)) / 255.0).tolist()
