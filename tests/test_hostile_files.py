"""Hostile data files stay harmless (issue 18): archive and image bombs, PostScript posing as PNG, 16-bit
images and file names that are not UTF-8 (crafted pickles: ``test_hostile_pickles``).

The CLI cases drive the real command line and check the exit status, the one stderr line (or, when
it trains, the file it names as skipped), that no traceback shows and that every watched file,
inside the data folder and outside it, is byte for byte as before. A bounded property-based fuzz
throws malformed archives at loading.
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
import tempfile
import time
import tracemalloc
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from selfsup.data import ArrayDataset, images, load_dataset
from selfsup.data.images import decode_image, list_images
from tests.test_bad_inputs import TRAIN, _run, _snapshot, folder_of_rgb_images
from tests.test_hostile_pickles import _edited, edits, no_hang

TINY = ["--epochs", "1", "--batch-size", "8", "--set", "backbone.width=4", "--set", "eval.plots=false",
        "--set", "train.progress=false", "--set", "train.device=cpu"]
HUGE_MEMBER = 256 * 2**20


# ---------------------------------------------------------------- hostile image files, through the real CLI


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header of ``width`` x ``height`` grey pixels with only a few rows of data: a decompression bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(width + 1) * 4))
            + chunk(b"IEND", b""))


POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n(ran) (w) file closefile showpage\n"
GRADIENT = np.tile(np.arange(0, 256, 2, dtype=np.uint8), (16, 1))  # 16 x 128


def sixteen_bit_png(eight_bit: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(eight_bit.astype(np.uint16) * 257).save(out, format="PNG")  # mode I;16
    return out.getvalue()


class Zeros(io.RawIOBase):
    """``size`` zero bytes, read in chunks: a huge archive member without holding it."""

    def __init__(self, size: int):
        self.left = size

    def readinto(self, buffer) -> int:
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count

    def readable(self) -> bool:
        return True


def tar_of(folder: Path, archive: Path, extra: dict[str, bytes | int] = {}) -> Path:  # noqa: B006 - read only
    """``folder`` as a .tar.gz, plus ``extra`` members: bytes, or a size for that many zero bytes (GNU headers, so
    names may hold any bytes)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz", format=tarfile.GNU_FORMAT, compresslevel=1) as tar:  # fast; 1.2 MB
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=os.fsdecode(os.fsencode(path.relative_to(folder))))
        for name, content in extra.items():
            info = tarfile.TarInfo(name)
            info.size = content if isinstance(content, int) else len(content)
            tar.addfile(info, Zeros(content) if isinstance(content, int) else io.BytesIO(content))
    return archive


def _write(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def _non_utf8_folder(data: Path) -> None:
    """16-bit images, with names that are not UTF-8: a file, and a class folder."""
    folder_of_rgb_images(data)
    for i in range(3):
        _write(Path(os.fsdecode(bytes(data) + b"/a/\xff" + bytes([48 + i]) + b".png")), sixteen_bit_png(GRADIENT))
        _write(Path(os.fsdecode(bytes(data) + b"/\xfe\n/" + bytes([48 + i]) + b".png")), sixteen_bit_png(255 - GRADIENT))


def _folder_with(case: Path, name: str, content: bytes) -> str:
    folder_of_rgb_images(case / "data")
    _write(case / "data" / name, content)
    return f"folder:{case / 'data'}"


def _archive_with_a_huge_member(case: Path) -> str:
    folder_of_rgb_images(case / "imgs")
    return f"folder:{tar_of(case / 'imgs', case / 'data' / 'imgs.tar.gz', {'a/00.png': HUGE_MEMBER})}"


def _archive_with_bad_images(case: Path) -> str:
    folder_of_rgb_images(case / "imgs")
    return "folder:" + str(tar_of(case / "imgs", case / "data" / "imgs.tar.gz", {
        "a/00_bomb.png": png_claiming(20000, 20000), "a/01_huge.png": HUGE_MEMBER, "a/02_ps.png": POSTSCRIPT,
        os.fsdecode(b"b/\xff16bit.png"): sixteen_bit_png(GRADIENT)}))


def _non_utf8_spec(case: Path) -> str:
    _non_utf8_folder(case / "data")
    return f"folder:{case / 'data'}"


CLI_CASES: dict[str, tuple[Callable[[Path], str], list[str], int, list[str]]] = {
    # name: (setup -> data spec, more argv, exit status, what stderr must say)
    "PNG claiming 20000x20000 pixels": (
        lambda c: _folder_with(c, "a/00.png", png_claiming(20000, 20000)), [], 2,
        ["cannot read image a/00.png in", "more than 67108864 pixels", "data.on_error=skip"]),
    "PostScript saved as x.png": (
        lambda c: _folder_with(c, "a/00.png", POSTSCRIPT), [], 2, ["cannot read image a/00.png in", "is not a JPEG, PNG"]),
    "tar.gz member of 256 MiB": (
        _archive_with_a_huge_member, [], 2,
        ["cannot read image a/00.png in", f"it is {HUGE_MEMBER} bytes, more than the 64 MiB"]),
    "bomb, huge member, PostScript, skipped": (
        _archive_with_bad_images, ["--set", "data.on_error=skip"], 0,
        ["skipped 3 unreadable image(s) in", "(first: a/00_bomb.png)"]),
    "16-bit images with non-UTF-8 names": (_non_utf8_spec, [], 0, []),  # streamed: in process, below
}


@pytest.fixture(scope="session")
def cli_outcomes(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_cli")
    prepared = {}
    for i, (name, (setup, extra, _, _)) in enumerate(CLI_CASES.items()):
        case = root / f"case{i}"
        _write(case / "outside" / "keep.txt", b"not selfsup's")
        spec = setup(case)
        argv = TRAIN[:4] + [spec, "--out", str(case / "run"), *TINY, *extra]
        prepared[name] = (argv, case, {w: _snapshot(case / w) for w in ("data", "outside")})

    def run(item):
        start = time.monotonic()
        return _run(item[0], root / "cache"), time.monotonic() - start

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(prepared, pool.map(run, prepared.values())))
    return {name: (*results[name], before, {w: _snapshot(case / w) for w in before}, case)
            for name, (_, case, before) in prepared.items()}


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_hostile_image_files_through_the_cli(name, cli_outcomes):
    (result, seconds, before, after, case), (_, _, code, says) = cli_outcomes[name], CLI_CASES[name]
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr and "codec" not in result.stderr
    assert after == before  # the data folder and the folder beside it, byte for byte
    assert not (case / "ran").exists() and not (case / "outside" / "ran").exists()
    if code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("selfsup: error: "), lines
    else:
        assert (case / "run" / "encoder.safetensors").is_file()
    for part in says:
        assert part in result.stderr, result.stderr
    assert seconds < 120


def test_a_huge_member_is_never_read_and_costs_no_memory(tmp_path):
    folder_of_rgb_images(tmp_path / "imgs")
    archive = tar_of(tmp_path / "imgs", tmp_path / "i.tar.gz", {"a/00.png": HUGE_MEMBER})
    assert archive.stat().st_size < 2 * 2**20
    tracemalloc.start()
    try:
        entries = dict(list_images(archive))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak
    with pytest.raises(ValueError, match=f"it is {HUGE_MEMBER} bytes, more than the 64 MiB"):
        entries["a/00.png"]()
    assert len(entries) == 21


def test_an_archive_that_expands_like_a_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 2**20)
    archive = tar_of(tmp_path / "empty", tmp_path / "bomb.tar.gz", {f"a/{i}.png": 2**20 - 1 for i in range(3)})
    with pytest.raises(ValueError, match="bomb.tar.gz expands to more than 100 times its size"):
        list_images(archive)


def test_a_file_over_the_cap_is_a_bad_image_named_and_skippable(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_BYTES", 900)  # above each 12x12 image
    data = folder_of_rgb_images(tmp_path / "d")
    _write(data / "a" / "00.png", bytes(1000))
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="cannot read image a/00.png in .*it is 1000 bytes, more than"):
        load_dataset(f"folder:{data}", split="train", progress=False)
    assert len(load_dataset(f"folder:{data}", split="train", on_error="skip", progress=False)) == 18


def test_a_16_bit_gradient_decodes_like_its_8_bit_copy():
    eight = decode_image(Image_bytes(GRADIENT), None)
    assert np.abs(decode_image(sixteen_bit_png(GRADIENT), None).astype(int) - eight).max() <= 1
    pgm = b"P5 128 16 65535\n" + (GRADIENT.astype(">u2") * 257).tobytes()  # Pillow opens 16-bit PGM as mode I
    assert np.abs(decode_image(pgm, None).astype(int) - eight).max() <= 1
    floats = io.BytesIO()
    Image.fromarray(GRADIENT.astype(np.float32) / 255).save(floats, format="TIFF")
    assert np.abs(decode_image(floats.getvalue(), None).astype(int) - eight).max() <= 1
    Image.fromarray(GRADIENT.astype(np.float32)).save(floats := io.BytesIO(), format="TIFF")
    with pytest.raises(ValueError, match=r"floating-point pixel values are not all within \[0, 1\]"):
        decode_image(floats.getvalue(), None)


def Image_bytes(pixels: np.ndarray, format: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=format)
    return out.getvalue()


def test_non_utf8_names_load_from_the_cache_the_second_time(tmp_path, monkeypatch):
    _non_utf8_folder(tmp_path / "d")
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    for stream in (False, True, False, True):
        dataset = load_dataset(f"folder:{tmp_path / 'd'}", split="pretrain", progress=False, stream=stream, workers=0)
        assert len(dataset) == 26 and "\udcfe\n" in dataset.classes


# ---------------------------------------------------------------- bounded fuzz: malformed archives


def _tiny_folder_archive() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        folder_of_rgb_images(Path(folder) / "imgs", sizes=((6, 6),) * 5)
        return tar_of(Path(folder) / "imgs", Path(folder) / "x.tar.gz").read_bytes()


TINY_ARCHIVE = _tiny_folder_archive()
TINY_TAR = zlib.decompress(TINY_ARCHIVE, 16 + zlib.MAX_WBITS)
PNG = Image_bytes(np.full((6, 6, 3), 7, np.uint8))


def _member_archive(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", format=tarfile.GNU_FORMAT) as tar:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


member_names = st.one_of(
    st.builds(lambda cls, stem, suffix: f"{cls}/{stem}{suffix}", st.sampled_from(["a", "b", "train/a", "test/b", "..", ""]),
              st.text(max_size=8), st.sampled_from([".png", ".PNG", ".jpg", ".tif", ".gif", ".txt"])),
    st.binary(max_size=24).map(os.fsdecode),
)
member_contents = st.one_of(st.just(PNG), st.binary(max_size=256), st.builds(lambda n: PNG[:n], st.integers(0, len(PNG))),
                            st.builds(lambda e: _edited(PNG, e), edits), st.just(POSTSCRIPT), st.just(png_claiming(9000, 9000)))
archives = st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda n: TINY_ARCHIVE[:n], st.integers(0, len(TINY_ARCHIVE))),
    st.builds(lambda e: _edited(TINY_TAR, e), edits),
    st.builds(lambda e: zlib.compress(_edited(TINY_TAR, e)), edits),
    st.lists(st.tuples(member_names, member_contents), max_size=8).map(_member_archive),
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          database=None)
@given(content=archives, suffix=st.sampled_from([".tar.gz", ".tar"]), split=st.sampled_from(["train", "test"]),
       on_error=st.sampled_from(["stop", "skip"]))
def test_fuzzed_archives_load_or_fail_in_one_line(content, suffix, split, on_error):
    with tempfile.TemporaryDirectory() as folder, no_hang(30):
        path = Path(folder) / f"x{suffix}"
        path.write_bytes(content)
        os.environ["SELFSUP_CACHE"] = str(Path(folder) / "cache")
        try:
            dataset = load_dataset(f"folder:{path}", split=split, on_error=on_error, progress=False)
        except (ValueError, OSError) as err:
            assert str(err) and "\n" not in str(err), repr(str(err))
        else:
            assert isinstance(dataset, ArrayDataset) and len(dataset) > 0
        finally:
            del os.environ["SELFSUP_CACHE"]

