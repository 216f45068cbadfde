"""Image datasets: every on-disk format built in a temporary folder, the cache, the download, and bad input."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup.data.download as download
from selfsup.data import load_dataset
from selfsup.data.cifar import FORMATS
from selfsup.data.images import HOLDOUT

CLASSES = ["cat", "dog", "frog"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "decoded"))


def fake_cifar(folder: Path, name: str = "cifar10", per_file: int = 4) -> dict[str, np.ndarray]:
    """A python-format CIFAR folder with random pixels; returns the train/test arrays it holds."""
    rng = np.random.default_rng(0)
    label_key, meta_file, names_key = {
        "cifar10": ("labels", "batches.meta", "label_names"),
        "cifar100": ("fine_labels", "meta", "fine_label_names"),
    }[name]
    files = {"cifar10": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"]), "cifar100": (["train"], ["test"])}[name]
    folder.mkdir(parents=True)
    arrays = {}
    for split, names in zip(("train", "test"), files):
        data, labels = [], []
        for file in names:
            batch = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
            y = rng.integers(0, 3, per_file).tolist()
            (folder / file).write_bytes(pickle.dumps({b"data": batch, label_key.encode(): y}))
            data.append(batch)
            labels += y
        arrays[split] = np.concatenate(data).reshape(-1, 3, 32, 32)
        arrays[split + "_labels"] = np.array(labels)
    (folder / meta_file).write_bytes(pickle.dumps({names_key.encode(): [c.encode() for c in CLASSES]}))
    return arrays


def publish(monkeypatch, path: Path, name: str) -> None:
    """Make the checksums of a fake dataset the "published" ones: every file of a CIFAR folder, or an archive."""
    if path.is_dir():
        for file in path.iterdir():
            monkeypatch.setitem(FORMATS[name].md5, file.name, hashlib.md5(file.read_bytes()).hexdigest())
    else:
        archive = download.ARCHIVES[name]
        monkeypatch.setitem(download.ARCHIVES, name, download.Archive(archive.url, hashlib.md5(path.read_bytes()).hexdigest()))


def make_tar(source: Path, archive: Path, arcname: str) -> Path:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source, arcname=arcname)
    return archive


def write_image_folder(root: Path, splits=("train", "test"), per_class: int = 4, size: int = 12) -> dict[str, np.ndarray]:
    """root/<split>/<class>/<i>.png with distinct pixels; returns {split: uint8 [N, 3, size, size]} in path order."""
    rng = np.random.default_rng(1)
    out = {}
    for split in splits:
        images = []
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
                images.append(pixels.transpose(2, 0, 1))
        out[split] = np.stack(images)
    return out


def test_cifar_python_folder_and_its_tar_gz_give_the_same_splits(tmp_path, monkeypatch):
    expected = fake_cifar(tmp_path / "a" / "cifar-10-batches-py")
    publish(monkeypatch, tmp_path / "a" / "cifar-10-batches-py", "cifar10")
    train = load_dataset("cifar10", tmp_path / "a", "train")
    test = load_dataset("cifar10", tmp_path / "a", "test")
    assert train.data.shape == (20, 3, 32, 32) and test.data.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(train.data.numpy(), expected["train"])
    np.testing.assert_array_equal(train.labels.numpy(), expected["train_labels"])
    assert train.classes == CLASSES and train.channels == 3 and len(train.mean) == 3
    assert torch.equal(load_dataset("cifar10", tmp_path / "a", "pretrain").data, train.data)
    publish(monkeypatch, make_tar(tmp_path / "a" / "cifar-10-batches-py", tmp_path / "b" / "cifar-10-python.tar.gz",
                                  "cifar-10-batches-py"), "cifar10")
    from_tar = load_dataset("cifar10", tmp_path / "b", "test", progress=False)
    np.testing.assert_array_equal(from_tar.data.numpy(), expected["test"])
    assert list((tmp_path / "decoded").glob("cifar10-test-*/data.npy"))


def test_cifar100_fine_labels(tmp_path, monkeypatch):
    expected = fake_cifar(tmp_path / "cifar100" / "cifar-100-python", "cifar100")
    publish(monkeypatch, tmp_path / "cifar100" / "cifar-100-python", "cifar100")
    test = load_dataset("cifar100", tmp_path, "test")
    np.testing.assert_array_equal(test.labels.numpy(), expected["test_labels"])
    assert test.classes == CLASSES


def test_cifar_as_image_folder_directory_or_split_tarballs(tmp_path):
    expected = write_image_folder(tmp_path / "dir" / "cifar10", size=32)
    train = load_dataset("cifar10", tmp_path / "dir", "train", progress=False)
    np.testing.assert_array_equal(train.data.numpy(), expected["train"])
    assert train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4 and train.classes == CLASSES
    for split in ("train", "test"):
        make_tar(tmp_path / "dir" / "cifar10" / split, tmp_path / "tars" / "cifar10" / f"{split}.tar.gz", split)
    test = load_dataset("cifar10", tmp_path / "tars", "test", progress=False)
    np.testing.assert_array_equal(test.data.numpy(), expected["test"])


def test_folder_spec_directory_tar_and_single_split_holdout(tmp_path):
    expected = write_image_folder(tmp_path / "imgs", size=12)
    make_tar(tmp_path / "imgs", tmp_path / "imgs.tar.gz", "imgs")
    for spec in (f"folder:{tmp_path / 'imgs'}", f"folder:{tmp_path / 'imgs.tar.gz'}"):
        test = load_dataset(spec, tmp_path / "cache", "test", progress=False)
        np.testing.assert_array_equal(test.data.numpy(), expected["test"])
    write_image_folder(tmp_path / "single", splits=("all",), per_class=10)
    source = tmp_path / "single" / "all"
    train = load_dataset(f"folder:{source}", tmp_path / "cache", "train", progress=False)
    test = load_dataset(f"folder:{source}", tmp_path / "cache", "test", progress=False)
    assert len(test) == 30 // HOLDOUT and len(train) + len(test) == 30
    resized = load_dataset(f"folder:{source}", tmp_path / "cache", "train", image_size=8, progress=False)
    assert resized.data.shape[1:] == (3, 8, 8)


def test_non_square_images_become_squares_and_a_grayscale_folder_keeps_one_channel(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(np.full((10, 20), 200, np.uint8), mode="L").save(tmp_path / "train" / "a" / "wide.png")
    data = load_dataset(f"folder:{tmp_path}", tmp_path / "cache", "train", image_size=10, progress=False).data
    assert data.shape == (1, 1, 10, 10) and (data == 200).all()
    Image.fromarray(np.full((10, 10, 3), (200, 10, 10), np.uint8), mode="RGB").save(tmp_path / "train" / "a" / "red.png")
    data = load_dataset(f"folder:{tmp_path}", tmp_path / "cache", "pretrain", image_size=10, progress=False).data
    assert data.shape == (2, 3, 10, 10) and (data[:, 0] == 200).all()  # one colour image: the folder stays RGB


def test_second_load_comes_from_the_cache_and_a_changed_source_is_decoded_again(tmp_path):
    write_image_folder(tmp_path / "imgs", per_class=60, size=16)
    archive = make_tar(tmp_path / "imgs", tmp_path / "imgs.tar.gz", "imgs")
    start = time.perf_counter()
    first = load_dataset(f"folder:{archive}", tmp_path / "root", "train", progress=False)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    second = load_dataset(f"folder:{archive}", tmp_path / "root", "train", progress=False)
    warm = time.perf_counter() - start
    assert torch.equal(first.data, second.data) and warm < cold / 3
    write_image_folder(tmp_path / "other", per_class=2, size=16)
    make_tar(tmp_path / "other", archive, "imgs")
    assert len(load_dataset(f"folder:{archive}", tmp_path / "root", "train", progress=False)) == 6


def test_stl10_binary_folder_and_archive(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    folder = tmp_path / "a" / "stl10_binary"
    folder.mkdir(parents=True)
    counts = {"train": 3, "test": 2, "unlabeled": 4}
    images = {split: rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8) for split, n in counts.items()}
    for split, array in images.items():
        array.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")  # column-major, as the original files
    np.array([1, 10, 3], np.uint8).tofile(folder / "train_y.bin")
    np.array([2, 2], np.uint8).tofile(folder / "test_y.bin")
    (folder / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    train = load_dataset("stl10", tmp_path / "a", "train")
    np.testing.assert_array_equal(train.data.numpy(), images["train"])
    assert train.labels.tolist() == [0, 9, 2] and train.classes[9] == "c9"
    pretrain = load_dataset("stl10", tmp_path / "a", "pretrain")
    assert len(pretrain) == 7 and pretrain.labels.tolist()[3:] == [-1] * 4
    publish(monkeypatch, make_tar(folder, tmp_path / "b" / "stl10_binary.tar.gz", "stl10_binary"), "stl10")
    test = load_dataset("stl10", tmp_path / "b", "test")
    np.testing.assert_array_equal(test.data.numpy(), images["test"])


def test_download_from_a_url_checks_the_md5(tmp_path, monkeypatch):
    fake_cifar(tmp_path / "src" / "cifar-10-batches-py")
    folder = tmp_path / "src" / "cifar-10-batches-py"
    archive = make_tar(folder, tmp_path / "src" / "cifar-10-python.tar.gz", "cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(download.ARCHIVES, "cifar10", download.Archive(archive.as_uri(), md5))
    data = load_dataset("cifar10", tmp_path / "root", "train", progress=False)
    assert (tmp_path / "root" / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes() and len(data) == 20
    corrupt = tmp_path / "src" / "corrupt.tar.gz"
    corrupt.write_bytes(archive.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(ValueError, match="corrupt.tar.gz .* is corrupt \\(MD5"):
        download.download(corrupt.as_uri(), tmp_path / "dl" / "corrupt.tar.gz", md5, progress=False)
    assert not list((tmp_path / "dl").iterdir())
    with pytest.raises(FileNotFoundError, match="cannot download"):
        download.download((tmp_path / "missing.tar.gz").as_uri(), tmp_path / "dl" / "x.tar.gz", md5, progress=False)


def test_unreadable_image_stops_with_its_name_or_is_skipped_with_a_count(tmp_path, capsys):
    write_image_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="cannot read image .*broken.png.*data.on_error=skip"):
        load_dataset(f"folder:{tmp_path / 'imgs'}", tmp_path / "root", "train", progress=False)
    data = load_dataset(f"folder:{tmp_path / 'imgs'}", tmp_path / "root", "train", on_error="skip", progress=False)
    assert len(data) == 12 and "skipped 1 unreadable image(s)" in capsys.readouterr().err


def test_bad_sources_give_one_line_errors(tmp_path, monkeypatch):
    def error(spec, root=tmp_path / "root", split="train"):
        with pytest.raises((ValueError, FileNotFoundError)) as info:
            load_dataset(spec, root, split, progress=False)
        assert "\n" not in str(info.value)
        return str(info.value)

    assert "does not exist" in error(f"folder:{tmp_path / 'nowhere'}")
    (tmp_path / "empty").mkdir()
    assert "no images found" in error(f"folder:{tmp_path / 'empty'}")
    write_image_folder(tmp_path / "imgs", per_class=30)
    whole = make_tar(tmp_path / "imgs", tmp_path / "whole.tar.gz", "imgs").read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(whole[: len(whole) // 2])
    assert "truncated" in error(f"folder:{tmp_path / 'cut.tar.gz'}")
    folder = tmp_path / "c" / "cifar-10-batches-py"
    fake_cifar(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}))
    assert "does not match the published checksum" in error("cifar10", tmp_path / "c", "test")
    publish(monkeypatch, folder, "cifar10")
    assert "expected 3 channels" in error("cifar10", tmp_path / "c", "test")
    assert "unknown dataset 'imagenet'" in error("imagenet")
    assert "unknown split" in error("digits", split="val")


def test_sequence_specs_are_routed_to_the_sequence_loaders(monkeypatch):
    import selfsup.data.sequences as sequences

    calls = []
    monkeypatch.setattr(sequences, "load_ucr", lambda name, split, root: calls.append(("ucr", name, split)) or "ucr")
    monkeypatch.setattr(
        sequences, "load_wav_folder", lambda path, split, on_error: calls.append(("wav", path, split, on_error)) or "wav"
    )
    assert load_dataset("ucr:GunPoint", "/r", "pretrain") == "ucr"
    assert load_dataset("wav:/a/b", "/r", "test", on_error="skip") == "wav"
    assert calls == [("ucr", "GunPoint", "train"), ("wav", "/a/b", "test", "skip")]


def test_digits_pretrain_is_its_train_split():
    assert torch.equal(load_dataset("digits", split="pretrain").data, load_dataset("digits", split="train").data)

