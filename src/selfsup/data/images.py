"""Image files of a folder or archive: listing them, picking a split, reading sizes, decoding one image, and
per-channel statistics. ``folder`` (decoded and cached) and ``stream`` (decoded per batch) both build on it.

Image files may come from anyone, so reading them is bounded: a file or archive member larger than
``MAX_IMAGE_BYTES`` is not read, an archive whose images expand beyond ``MAX_EXPANSION`` times its
own size is refused, an image whose header claims more than ``MAX_IMAGE_PIXELS`` is not decoded, and
only the raster formats of ``IMAGE_SUFFIXES`` are decoded, whatever the content says it is (Pillow
would otherwise hand PostScript to Ghostscript). Each of these is a bad image like any other: named,
and skipped with ``data.on_error=skip``.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
import warnings
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}
RASTER_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "PPM", "TIFF")  # Pillow's names for IMAGE_SUFFIXES
MAX_IMAGE_BYTES = 64 * 2**20  # one image file or archive member; a photograph is rarely above 20 MiB
MAX_IMAGE_PIXELS = 8192 * 8192  # claimed by one image's header; 192 MiB once decoded to RGB
MAX_EXPANSION = 100  # images held from an archive, over its own size: compressed images barely shrink
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
SPLIT_DIRS = {"pretrain": ("train",), "train": ("train",), "test": ("test", "val"), "all": ("train", "test", "val")}
SPLIT_NAMES = ("train", "test", "val")
HOLDOUT = 10
HOLDOUT_RULE = (f"no train/ and test/ folders: pre-training uses every image; kNN and the linear probe test on every "
                f"{HOLDOUT}th image of each class folder in path order (the last one of a class of 2 to {HOLDOUT - 1} "
                "images) and fit on the others")
SIZE_SAMPLE = 256  # images whose size (header only) picks the side of a source of mixed sizes
_warned: set[str] = set()  # warnings already given in this process (every split of a source is loaded)


def is_archive(path: Path) -> bool:
    return path.name.endswith(ARCHIVE_SUFFIXES)


def split_source(path: Path, split: str) -> Path:
    """The file or folder that holds ``split``: ``path`` itself, or its ``<split>.tar.gz`` sibling archive."""
    if not path.exists():
        raise FileNotFoundError(f"data path {printable(path)} does not exist")
    if path.is_dir():
        for name in SPLIT_DIRS[split]:
            for suffix in ARCHIVE_SUFFIXES:
                if (path / f"{name}{suffix}").is_file():
                    return path / f"{name}{suffix}"
    return path


def split_and_class(parts: tuple[str, ...]) -> tuple[str | None, str]:
    """(split folder or None, class folder or '') of an image's relative path: ``[split/]class/image``; an image
    directly in a split folder, or in the root, has no class."""
    if len(parts) >= 3 and parts[-3] in SPLIT_NAMES:
        return parts[-3], parts[-2]
    if len(parts) == 2 and parts[0] in SPLIT_NAMES:
        return parts[0], ""
    return None, parts[-2] if len(parts) >= 2 else ""


def printable(name: str | Path) -> str:
    """``name`` for a one-line message: undecodable bytes of a file name as \\xff, control characters escaped."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _too_large(size: int) -> str:
    return f"it is {size} bytes, more than the {MAX_IMAGE_BYTES / 2**20:g} MiB one image file may have; it was not read"


def _refusal(message: str) -> Callable[[], bytes]:
    """A reader for an image refused while listing: it raises when the image is read, so it is named and skippable."""

    def read() -> bytes:
        raise ValueError(message)

    return read


def read_image_file(path: Path) -> bytes:
    """The bytes of one image file; one over ``MAX_IMAGE_BYTES`` is refused unread.

    Reads what its size says plus one byte (a read of the whole cap would allocate it for every
    image); a file whose size lies, like those of /proc, is read on, up to the cap.
    """
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > MAX_IMAGE_BYTES:
            raise ValueError(_too_large(size))
        data = handle.read(size + 1)
        if len(data) > size:
            data += handle.read(MAX_IMAGE_BYTES + 1 - len(data))
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(_too_large(len(data)))
    return data


def _member_reader(archive: tarfile.TarFile, member: tarfile.TarInfo) -> tuple[Callable[[], bytes], int]:
    """(reader, bytes held) of one archive member, read now (a gzip stream cannot seek back) unless over the cap.

    Its header's size is checked before anything is read, and no more than that size is read: tarfile
    stops there, whatever follows.
    """
    if member.size > MAX_IMAGE_BYTES:
        return _refusal(_too_large(member.size)), 0
    data = archive.extractfile(member).read(member.size)
    return (lambda: data), len(data)


def _archive_images(source: Path) -> dict[str, Callable[[], bytes]]:
    """Reader of each image member of a tar(.gz), by member name; an archive that expands like a bomb is refused."""
    readers, held = {}, 0
    budget = max(MAX_IMAGE_BYTES, MAX_EXPANSION * source.stat().st_size)
    with tarfile.open(source, "r:*") as archive:
        for member in archive:  # one sequential pass
            if member.isfile() and PurePosixPath(member.name).suffix.lower() in IMAGE_SUFFIXES:
                readers[member.name], size = _member_reader(archive, member)
                held += size
                if held > budget:
                    raise ValueError(f"{printable(source)} expands to more than {MAX_EXPANSION} times its size "
                                     "(an archive bomb?); it was not read further: extract it and check its contents")
    return readers


def list_images(source: Path) -> list[tuple[str, Callable[[], bytes]]]:
    """(relative POSIX path, reader of its bytes) for every image file, in path order."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        return [(p.relative_to(source).as_posix(), lambda path=p: read_image_file(path)) for p in files]
    if not is_archive(source):
        raise ValueError(f"{printable(source)} is neither a folder nor a .tar/.tar.gz archive of images")
    try:
        readers = _archive_images(source)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise ValueError(f"{printable(source)} is truncated or not a valid tar archive ({printable(str(err))}); "
                         "download or copy it again") from None
    return sorted(readers.items())


@dataclass
class Selection:
    """The images of one split of a source and how they were chosen.

    classes: the class folders, which labels index (``labels_of``); empty when the source is unlabelled.
    rule: how selfsup held this split out of a source without train/ and test/ folders ('' otherwise).
    unlabelled: why the source has no labels, e.g. "has no class folders" ('' when it has them).
    """

    entries: list[tuple[str, Callable[[], bytes]]]
    classes: list[str]
    rule: str = ""
    unlabelled: str = ""


def select_split(
    entries: list[tuple[str, Callable[[], bytes]]], split: str, source: Path, whole: bool = False
) -> Selection:
    """The entries of ``split`` ('pretrain', 'train', 'test' or 'all') of ``source``, in path order.

    A source with train/ and test/ (or val/) folders gives each split its own images; one that holds the split
    alone (``whole``: the ``train.tar.gz`` or ``test.tar.gz`` that ``split_source`` found beside the others), all
    of its images. Any other source is one pool: 'pretrain' and 'all' take every image, and 'train' and 'test'
    are fixed by ``holds_out`` (stratified by class). Fewer than two class folders: unlabelled.
    """
    keyed = [(split_and_class(PurePosixPath(name).parts), name, read) for name, read in entries]
    found = sorted({cls for (_, cls), _, _ in keyed if cls})
    classes = found if len(found) >= 2 else []
    unlabelled = "" if classes else (f"has a single class ('{found[0]}')" if found else "has no class folders")
    splits = {group for (group, _), _, _ in keyed}
    if split == "all" or whole:
        return Selection([(name, read) for _, name, read in keyed], classes, "", unlabelled)
    if len(splits) > 1:
        chosen = [(name, read) for (group, _), name, read in keyed if group in SPLIT_DIRS[split]]
        if not chosen:
            raise ValueError(f"{printable(source)} has splits {sorted(s for s in splits if s)} but no '{split}' split")
        return Selection(chosen, classes, "", unlabelled)
    if split == "pretrain":
        return Selection([(name, read) for _, name, read in keyed], classes, "", unlabelled)
    test = holds_out([cls for (_, cls), _, _ in keyed])
    chosen = [(name, read) for (_, name, read), held in zip(keyed, test) if held == (split == "test")]
    if not chosen:
        raise ValueError(f"{printable(source)}: no class folder holds two images or more, so none can be held out "
                         "for kNN and the linear probe: add images")
    return Selection(chosen, classes, HOLDOUT_RULE, unlabelled)


def holds_out(classes: list[str]) -> list[bool]:
    """Which images (their class folders, in path order) a source without train/ and test/ folders tests on:
    within each class, every ``HOLDOUT``-th image, or the last one of a class of 2 to ``HOLDOUT - 1`` images.
    Each class of two images or more keeps one at least on either side; the split depends on the paths alone."""
    members: dict[str, list[int]] = {}
    for i, cls in enumerate(classes):
        members.setdefault(cls, []).append(i)
    test = [False] * len(classes)
    for indices in members.values():
        held = indices[HOLDOUT - 1 :: HOLDOUT] or (indices[-1:] if len(indices) >= 2 else [])
        for i in held:
            test[i] = True
    return test


def labels_of(names: list[str], classes: list[str]) -> np.ndarray:
    """int64 label of each image path: its class folder's index in ``classes``, -1 without one."""
    index = {name: i for i, name in enumerate(classes)}
    return np.asarray([index.get(split_and_class(PurePosixPath(n).parts)[1], -1) for n in names], dtype=np.int64)


def decode_image(data: bytes, size: int | None) -> np.ndarray:
    """uint8 [size, size, 3]: ``data`` decoded to RGB, its shorter side resized to ``size`` and centre-cropped.

    Raises ValueError (one line) for anything Pillow cannot or must not decode: the bytes come from
    whoever made the folder, and Pillow's parsers fail in many ways (struct.error, EOFError, ...).
    """
    try:
        with _raster_image(data) as image:
            return np.asarray(_fit(_eight_bit_rgb(image), size))
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - a hostile file is a bad image however Pillow fails on it
        raise ValueError(printable(" ".join(f"{type(err).__name__}: {err}".split()))[:300]) from None


def _raster_image(data: bytes) -> Any:
    """Pillow's image of ``data``, opened as one of ``RASTER_FORMATS`` only, and within ``MAX_IMAGE_PIXELS``."""
    from PIL import Image, UnidentifiedImageError

    bomb = f"its header claims more than {MAX_IMAGE_PIXELS} pixels (8192 x 8192), more than one image may have"
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=RASTER_FORMATS)
        except UnidentifiedImageError:
            raise ValueError("it is not a JPEG, PNG, BMP, GIF, WebP, PPM/PGM or TIFF image") from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise ValueError(bomb) from None
    if image.width * image.height > MAX_IMAGE_PIXELS:
        image.close()
        raise ValueError(bomb)
    return image


def _eight_bit_rgb(image: Any) -> Any:
    """RGB at 8 bits: 16-bit grey (I;16, and I as Pillow opens 16-bit PGM) is scaled by its depth, not clipped
    to 255; floating-point grey (F) must lie in [0, 1]."""
    from PIL import Image

    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image).astype(np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise ValueError("its 32-bit pixel values exceed 16 bits; save it with 8 or 16 bits per channel")
        grey = (values >> 8).astype(np.uint8)
    elif image.mode == "F":
        values = np.asarray(image)
        if not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
            raise ValueError("its floating-point pixel values are not all within [0, 1]; save it with 8 bits per channel")
        grey = np.round(values * 255).astype(np.uint8)
    else:
        return image.convert("RGB")
    return Image.fromarray(grey).convert("RGB")


def _fit(image: Any, size: int | None) -> Any:
    """``image`` with its shorter side resized to ``size`` and centre-cropped to a square (unchanged for None)."""
    from PIL import Image

    if size is None or image.size == (size, size):
        return image
    scale = size / min(image.size)
    resized = (max(size, round(image.width * scale)), max(size, round(image.height * scale)))
    image = image.resize(resized, Image.BICUBIC)
    left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
    return image.crop((left, top, left + size, top + size))


def _image_size(read: Callable[[], bytes]) -> tuple[int, int] | None:
    """(width, height) from the image's header, or None if it is unreadable or refused."""
    try:
        with _raster_image(read()) as image:
            return image.size
    except Exception:  # noqa: BLE001 - any image that fails here fails again, named, when it is decoded
        return None


def common_side(reads: list[Callable[[], bytes]], source: Path, image_size: int | None) -> int | None:
    """``image_size``, or the shorter side most images have (among up to ``SIZE_SAMPLE``); mixed sizes are logged."""
    sample = reads[:: max(1, len(reads) // SIZE_SAMPLE)][:SIZE_SAMPLE]
    sizes = Counter(size for size in (_image_size(read) for read in sample) if size is not None)
    if not sizes:
        return image_size
    side = image_size or min(sizes.most_common(1)[0][0])
    if len(sizes) > 1:
        seen = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(4)) + (", ..." if len(sizes) > 4 else "")
        why = "data.image_size" if image_size else "the size most of them have; set data.image_size to choose"
        warn_once(f"selfsup: {printable(source)} holds images of {len(sizes)} sizes ({seen} among {len(sample)} sampled): "
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
