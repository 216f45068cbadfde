"""Image files of a folder or archive: listing them, picking a split, reading sizes, decoding one image, and
per-channel statistics. ``folder`` (decoded and cached) and ``stream`` (decoded per batch) both build on it."""

from __future__ import annotations

import io
import sys
import tarfile
import zlib
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
SPLIT_DIRS = {"pretrain": ("train",), "train": ("train",), "test": ("test", "val")}
HOLDOUT = 10
SIZE_SAMPLE = 256  # images whose size (header only) picks the side of a source of mixed sizes
_warned: set[str] = set()  # warnings already given in this process (every split of a source is loaded)


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
    if len(sizes) > 1:
        seen = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(4)) + (", ..." if len(sizes) > 4 else "")
        why = "data.image_size" if image_size else "the size most of them have; set data.image_size to choose"
        warn_once(f"selfsup: {source} holds images of {len(sizes)} sizes ({seen} among {len(sample)} sampled): "
                  f"all are resized and centre-cropped to {side}x{side} ({why})")
    return side


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


def warn_once(message: str) -> None:
    """``message`` on stderr, once per process (the splits of one source are loaded one after the other)."""
    if message not in _warned:
        _warned.add(message)
        print(message, file=sys.stderr)
