"""``selfsup embed``: one .npz of every image's features with its file, label and the class names; the held-out
split alone; a streamed folder embeds batch by batch to the same features as its cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import selfsup
from selfsup.cli import main
from selfsup.commands.evaluation import load_run
from selfsup.data import load_dataset
from selfsup.data.stream import ImageFiles
from selfsup.evaluate import features as features_module
from tests.test_folder_splits import SMALL, write_images


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A run on a flat folder of two classes (and three images outside them), with its decoding cache."""
    root = tmp_path_factory.mktemp("embed")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SELFSUP_CACHE", str(root / "decoded"))
        names = write_images(root / "imgs", {"": 3, "ant": 11, "bee": 12})
        selfsup.fit("simclr", f"folder:{root / 'imgs'}", root / "run",
                    overrides={"train": {"epochs": 1, "batch_size": 8}}, assignments=SMALL)
    return root, names


@pytest.fixture(autouse=True)
def shared_cache(trained, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(trained[0] / "decoded"))


def test_embed_writes_every_image_with_its_path_label_and_classes(trained, capsys):
    root, names = trained
    out = root / "features.npz"
    assert main(["embed", "--run", str(root / "run"), "--data", f"folder:{root / 'imgs'}", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["shape"][0] == len(names) == 26
    with np.load(out, allow_pickle=False) as saved:
        assert saved["paths"].tolist() == names and saved["features"].dtype == np.float32
        assert saved["classes"].tolist() == ["ant", "bee"]
        expected = [-1 if "/" not in name else ["ant", "bee"].index(name.split("/")[0]) for name in names]
        assert saved["labels"].dtype == np.int64 and saved["labels"].tolist() == expected
        features = saved["features"]
    assert features.shape == (26, load_run(root / "run")[1].out_dim) and np.isfinite(features).all()
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("features")) == ["features.npz"]


def test_embed_of_the_test_split_is_the_held_out_list(trained):
    root, _ = trained
    out = root / "test.npz"
    selfsup.embed(root / "run", f"folder:{root / 'imgs'}", out, split="test")
    listed = json.loads((root / "run" / "eval_split.json").read_text())["test_files"]
    with np.load(out) as saved:
        assert saved["paths"].tolist() == listed == ["02.png", "ant/09.png", "bee/09.png"]
        test_rows = saved["features"]
    selfsup.embed(root / "run", f"folder:{root / 'imgs'}", root / "all.npz")
    with np.load(root / "all.npz") as everything:
        rows = [everything["paths"].tolist().index(name) for name in listed]
        np.testing.assert_allclose(test_rows, everything["features"][rows], rtol=1e-5, atol=1e-6)


def test_a_streamed_folder_embeds_batch_by_batch_to_the_cached_features(trained, monkeypatch):
    root, _ = trained
    batches = []
    extract = features_module.extract_features

    def watched(encoder, dataset, device, batch_size=512, **options):
        batches.append(type(dataset.data))
        return extract(encoder, dataset, device, batch_size=4, **options)

    monkeypatch.setattr("selfsup.commands.embed.extract_features", watched)
    selfsup.embed(root / "run", f"folder:{root / 'imgs'}", root / "streamed.npz", stream=True)
    selfsup.embed(root / "run", f"folder:{root / 'imgs'}", root / "cached.npz", stream=False)
    assert batches == [ImageFiles, torch.Tensor]
    with np.load(root / "streamed.npz") as streamed, np.load(root / "cached.npz") as cached:
        assert streamed["paths"].tolist() == cached["paths"].tolist()
        np.testing.assert_allclose(streamed["features"], cached["features"], rtol=1e-5, atol=1e-6)


def test_features_are_normalised_with_the_pretraining_statistics(trained, monkeypatch):
    root, _ = trained
    seen = []
    monkeypatch.setattr("selfsup.commands.embed.extract_features",
                        lambda encoder, dataset, device: seen.append((dataset.mean, dataset.std)) or torch.zeros(3, 2))
    selfsup.embed(root / "run", f"folder:{root / 'imgs'}", root / "t.npz", split="test")
    pretrain = load_dataset(f"folder:{root / 'imgs'}", None, "pretrain", progress=False)
    assert seen == [(pretrain.mean, pretrain.std)]
    assert load_dataset(f"folder:{root / 'imgs'}", None, "test", progress=False).mean != pretrain.mean


def test_a_npy_name_gets_the_features_alone_and_any_other_name_exactly_an_npz(trained, capsys):
    root, _ = trained
    selfsup.embed(root / "run", f"folder:{root / 'imgs'}", root / "plain.npy", split="test")
    assert np.load(root / "plain.npy").shape[0] == 3 and "holds the features alone" in capsys.readouterr().err
    selfsup.embed(root / "run", f"folder:{root / 'imgs'}", root / "named.features", split="test")
    with np.load(root / "named.features") as saved:
        assert saved["features"].shape[0] == 3
    assert not list(root.glob("named.features*.npz")) and not list(root.glob(".*tmp"))


def test_data_without_files_is_named_by_split_and_index():
    everything = load_dataset("digits", None, "all")
    train, test = load_dataset("digits", None, "train"), load_dataset("digits", None, "test")
    names = everything.sample_names("all")
    assert len(everything) == len(train) + len(test) and names[0] == "train/0" and names[-1] == f"test/{len(test) - 1}"
    assert torch.equal(everything.labels, torch.cat([train.labels, test.labels]))
    assert torch.equal(everything.data[len(train):], test.data)
