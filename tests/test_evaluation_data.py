"""Evaluation data: every split normalised with the statistics the encoder trained with, and transfer across
colour and gray images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.commands.evaluation import evaluate_run, load_run
from selfsup.train.setup import load_datasets
from selfsup.train.trainer import fit
from tests.helpers import digits

TINY = ["backbone.width=4", "train.epochs=1", "train.device=cpu", "train.progress=false", "eval.every=0",
        "eval.plots=false", "eval.linear_epochs=2", "eval.knn_k=5"]


def split_folder(root, brightness: dict[str, int], channels: int = 3, per_class: int = 12):
    """``root/{train,test}/{a,b}/*.png`` whose pixels centre on ``brightness[split]``."""
    rng = np.random.default_rng(0)
    for split, level in brightness.items():
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(rng.normal(level, 20, (12, 12, channels)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(root / split / cls / f"{i}.png")
    return root


def test_the_test_split_takes_the_training_statistics_not_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    folder = split_folder(tmp_path / "imgs", {"train": 60, "test": 200})
    data = load_datasets(f"folder:{folder}", None)
    assert data.pretrain.mean[0] < 0.3  # the dark training images' statistics ...
    assert data.test.mean == data.train.mean == data.pretrain.mean and data.test.std == data.pretrain.std
    assert data.test.data.float().mean() / 255 > 0.7  # ... normalise the bright test images too


def test_a_run_loads_its_test_split_with_the_training_statistics(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    folder = split_folder(tmp_path / "imgs", {"train": 60, "test": 200})
    run = tmp_path / "run"
    fit("simclr", f"folder:{folder}", out_dir=run, assignments=TINY + ["train.batch_size=8"])
    _, _, test = load_run(run)
    assert test.mean == load_datasets(f"folder:{folder}", None).pretrain.mean


@pytest.mark.parametrize("channels, says", [(3, "converted to their luminance"), (1, None)])
def test_transfer_converts_colour_to_the_encoders_gray(tmp_path, monkeypatch, capsys, channels, says):
    """A digits (gray) encoder scores a colour folder through its luminance; a gray folder needs nothing."""
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    fit("simclr", "digits", out_dir=run, datasets=digits(), assignments=TINY)
    folder = split_folder(tmp_path / "imgs", {"train": 60, "test": 60}, channels=channels)
    capsys.readouterr()
    result = evaluate_run(run, "knn", data=f"folder:{folder}")
    err = capsys.readouterr().err
    assert 0.0 <= result["knn_top1"] <= 1.0
    assert (says in err) if says else "converted" not in err


def test_transfer_repeats_gray_for_a_colour_encoder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "cache"))
    colour = split_folder(tmp_path / "colour", {"train": 100, "test": 100})
    run = tmp_path / "run"
    fit("simclr", f"folder:{colour}", out_dir=run, assignments=TINY + ["train.batch_size=8"])
    result = evaluate_run(run, "knn", data="digits")
    assert "repeated over 3 channels" in capsys.readouterr().err and 0.0 <= result["knn_top1"] <= 1.0


def test_colour_to_gray_is_pillows_luminance():
    from selfsup.commands.evaluation import _convert_channels
    from selfsup.data.base import ArrayDataset

    rgb = np.random.default_rng(1).integers(0, 256, (4, 9, 9, 3), dtype=np.uint8)
    dataset = ArrayDataset(torch.from_numpy(rgb).permute(0, 3, 1, 2).contiguous(), torch.zeros(4, dtype=torch.long),
                           ["x"], "rgb", mean=(0.5,) * 3, std=(0.2,) * 3)
    _convert_channels(dataset, 1, "rgb", {"data": {"spec": "digits"}})
    pillow = np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in rgb])[:, None]
    assert dataset.data.shape == (4, 1, 9, 9) and np.abs(dataset.data.numpy().astype(int) - pillow).max() <= 1
    assert dataset.mean[0] == pytest.approx(pillow.mean() / 255, abs=0.01)
