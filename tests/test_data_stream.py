"""Streamed folders: decoded by DataLoader workers batch by batch, equal to the cached decode."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import selfsup.data.folder as folder
from selfsup.data import iterate_batches, load_dataset
from selfsup.data.stream import ImageFiles
from selfsup.train.setup import load_datasets
from selfsup.train.trainer import fit
from tests.test_data_images import make_tar, write_image_folder


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "decoded"))


def _load(tmp_path, split="train", **options):
    return load_dataset(f"folder:{tmp_path / 'imgs'}", tmp_path / "root", split, progress=False, **options)


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_equal_the_cached_decode_in_any_order(tmp_path, workers):
    write_image_folder(tmp_path / "imgs", per_class=6, size=10)
    cached = _load(tmp_path, stream=False)
    streamed = _load(tmp_path, stream=True, workers=workers)
    assert isinstance(streamed.data, ImageFiles) and streamed.data.shape == cached.data.shape
    assert torch.equal(streamed.labels, cached.labels) and streamed.classes == cached.classes
    np.testing.assert_allclose(streamed.mean, cached.mean, atol=1e-6)
    np.testing.assert_allclose(streamed.std, cached.std, atol=1e-6)
    batches = list(torch.randperm(len(cached), generator=torch.Generator().manual_seed(0)).split(5))
    for indices, images in zip(batches, iterate_batches(streamed.data, batches, torch.device("cpu")), strict=True):
        assert torch.equal(images, cached.data[indices])


def test_large_directories_stream_and_archives_refuse_to(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "imgs")
    assert isinstance(_load(tmp_path).data, torch.Tensor)
    monkeypatch.setattr(folder, "STREAM_ABOVE_BYTES", 100)
    assert isinstance(_load(tmp_path, split="test").data, ImageFiles)
    archive = make_tar(tmp_path / "imgs", tmp_path / "imgs.tar.gz", "imgs")
    assert isinstance(load_dataset(f"folder:{archive}", tmp_path, "test", progress=False).data, torch.Tensor)
    with pytest.raises(ValueError, match="is an archive.*extract it"):
        load_dataset(f"folder:{archive}", tmp_path, "test", progress=False, stream=True)


def test_unreadable_streamed_image_stops_with_its_name_or_is_replaced(tmp_path, capsys):
    write_image_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    everything = [torch.arange(13)]
    stopping = _load(tmp_path, stream=True, workers=1)
    with pytest.raises(ValueError, match=r"^cannot read image train/dog/broken.png in .*data.on_error=skip$"):
        list(iterate_batches(stopping.data, everything, torch.device("cpu")))
    skipping = _load(tmp_path, stream=True, workers=0, on_error="skip")
    (images,) = iterate_batches(skipping.data, everything, torch.device("cpu"))
    broken = skipping.data.names.index("train/dog/broken.png")
    assert torch.equal(images[broken], images[broken + 1])
    assert "skipped unreadable image" in capsys.readouterr().err


def test_training_on_a_streamed_folder_equals_training_on_its_cache(tmp_path):
    write_image_folder(tmp_path / "imgs", per_class=8, size=12)
    common = ["backbone.width=4", "eval.plots=false", "train.progress=false", "eval.knn_k=5"]
    summaries = {}
    for name, stream in (("cached", "false"), ("streamed", "true")):
        summaries[name] = fit(
            "simclr", f"folder:{tmp_path / 'imgs'}", tmp_path / name,
            overrides={"train": {"epochs": 2, "batch_size": 8, "device": "cpu"}},
            assignments=common + [f"data.stream={stream}", "data.workers=1"],
        )
    losses = {name: [json.loads(line)["loss"] for line in open(tmp_path / name / "metrics.jsonl")] for name in summaries}
    assert losses["streamed"] == pytest.approx(losses["cached"], rel=1e-6)
    assert summaries["streamed"]["knn_top1"] == pytest.approx(summaries["cached"]["knn_top1"])


@pytest.mark.parametrize(
    "options, message",
    [
        ({"stream": "sometimes"}, "data.stream must be auto, true or false"),
        ({"workers": -1}, "data.workers must be auto or a whole number"),
        ({"on_error": "ignore"}, "data.on_error must be stop or skip"),
    ],
)
def test_bad_data_options_are_one_line_errors(options, message):
    with pytest.raises(ValueError, match=message):
        load_datasets("digits", None, options)
