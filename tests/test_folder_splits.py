"""Folders without train/ and test/ folders: pre-training takes every image, kNN a fixed stratified held-out split
written to the run folder; folders without class folders are unlabelled and get collapse monitors, not kNN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.cli import main
from selfsup.data import load_dataset
from selfsup.data.images import HOLDOUT, holds_out
from selfsup.train.trainer import fit

SMALL = ["backbone.width=4", "train.device=cpu", "train.progress=false", "eval.linear_epochs=2", "eval.plots=false",
         "data.workers=0"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "decoded"))


def write_images(root: Path, counts: dict[str, int], size: int = 8, seed: int = 0) -> list[str]:
    """``counts[cls]`` random PNGs in ``root/cls/`` (``''``: in the root itself); their relative paths, sorted."""
    rng = np.random.default_rng(seed)
    names = []
    for cls, count in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            name = f"{cls}/{i:02d}.png" if cls else f"{i:02d}.png"
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name)
            names.append(name)
    return sorted(names)


def _load(source: Path, split: str, **options):
    return load_dataset(f"folder:{source}", None, split, progress=False, **options)


def _train(data: Path, out: Path, *extra: str) -> dict:
    return fit("simclr", f"folder:{data}", out, overrides={"train": {"epochs": 1, "batch_size": 8}},
               assignments=SMALL + list(extra))


def test_a_flat_folder_pretrains_on_every_image_and_holds_out_one_in_ten_per_class(tmp_path):
    names = write_images(tmp_path / "imgs", {"ant": 25, "bee": 4, "cow": 1, "dog": 10})
    pretrain, train, test = (_load(tmp_path / "imgs", split) for split in ("pretrain", "train", "test"))
    assert len(pretrain) == len(names) == 40 and pretrain.paths == names
    assert sorted(train.paths + test.paths) == names and not set(train.paths) & set(test.paths)
    assert test.paths == ["ant/09.png", "ant/19.png", "bee/03.png", "dog/09.png"]  # every 10th; the last of 2..9
    held = {cls: sum(p.startswith(cls) for p in test.paths) for cls in ("ant", "bee", "cow", "dog")}
    assert held == {"ant": 25 // HOLDOUT, "bee": 1, "cow": 0, "dog": 1}
    assert train.classes == test.classes == ["ant", "bee", "cow", "dog"]
    assert test.labels.tolist() == [0, 0, 1, 3] and test.split_rule and not pretrain.split_rule
    assert _load(tmp_path / "imgs", "test").paths == test.paths  # fixed: the paths alone decide it


def test_holding_out_keeps_each_class_of_two_or_more_on_both_sides():
    for count in range(1, 35):
        test = holds_out(["x"] * count)
        assert sum(test) == (max(1, count // HOLDOUT) if count >= 2 else 0)
        assert count - sum(test) >= 1


def test_archives_and_streamed_folders_split_as_the_folder_does(tmp_path):
    import tarfile

    write_images(tmp_path / "imgs", {"ant": 12, "bee": 12})
    with tarfile.open(tmp_path / "imgs.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "imgs", arcname="imgs")
    for split in ("pretrain", "test"):
        folder = _load(tmp_path / "imgs", split)
        archive = _load(tmp_path / "imgs.tar.gz", split)
        streamed = _load(tmp_path / "imgs", split, stream=True, workers=0)
        assert [p.split("/", 1)[1] for p in archive.paths] == folder.paths == streamed.paths
        assert torch.equal(archive.labels, folder.labels) and torch.equal(streamed.labels, folder.labels)
        assert torch.equal(archive.data, folder.data)
    assert len(_load(tmp_path / "imgs", "pretrain")) == 24


def test_a_folder_with_train_and_test_folders_keeps_them(tmp_path):
    write_images(tmp_path / "imgs" / "train", {"ant": 3, "bee": 3})
    write_images(tmp_path / "imgs" / "test", {"ant": 2, "bee": 2}, seed=1)
    pretrain, test = _load(tmp_path / "imgs", "pretrain"), _load(tmp_path / "imgs", "test")
    assert len(pretrain) == 6 and test.paths == ["test/ant/00.png", "test/ant/01.png", "test/bee/00.png",
                                                 "test/bee/01.png"]
    assert not test.split_rule and len(_load(tmp_path / "imgs", "all")) == 10


def test_a_run_on_a_flat_folder_lists_its_held_out_files_and_says_so(tmp_path, capsys):
    names = write_images(tmp_path / "imgs", {"ant": 12, "bee": 12})
    _train(tmp_path / "imgs", tmp_path / "run")
    err = capsys.readouterr().err
    split = json.loads((tmp_path / "run" / "eval_split.json").read_text())
    assert split["test_files"] == ["ant/09.png", "bee/09.png"] and split["images"] == {"pretrain": 24, "train": 22,
                                                                                      "test": 2}
    assert "every 10th image of each class folder" in split["rule"]
    manifest = json.loads((tmp_path / "run" / "selfsup-manifest.json").read_text())
    assert "eval_split.json" in manifest["entries"]
    line = [text for text in err.splitlines() if "has no train/ and test/ folders" in text]
    assert line == [(f"selfsup: {tmp_path / 'imgs'} has no train/ and test/ folders: pre-training uses all "
                     f"{len(names)} images; kNN and the linear probe hold out 1 in {HOLDOUT} images per class (the "
                     f"list: {tmp_path / 'run' / 'eval_split.json'})")]


@pytest.mark.parametrize("counts, why", [({"": 40}, "has no class folders"),
                                         ({"only": 40}, "has a single class ('only')")])
def test_an_unlabelled_folder_reports_collapse_monitors_instead_of_knn(tmp_path, capsys, counts, why):
    write_images(tmp_path / "imgs", counts)
    assert (_load(tmp_path / "imgs", "pretrain").labels == -1).all()
    summary = _train(tmp_path / "imgs", tmp_path / "run", "eval.plots=true", "eval.every=1")
    err = capsys.readouterr().err
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    for result in (summary, written):
        assert "knn_top1" not in result and "linear_top1" not in result
        assert 0 < result["feature_std_ratio"] and 1 <= result["feature_effective_rank"] <= result["feature_dim"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "probe_top1" not in rows[-1] and "knn_top1" not in rows[-1] and "feature_std" in rows[-1]
    assert (tmp_path / "run" / "embedding_map.png").is_file()
    assert (f"selfsup: {tmp_path / 'imgs'} {why}: kNN and the linear probe need labels; reporting the collapse "
            "monitors only (put images in one folder per class to get them)") in err.splitlines()
    assert main(["eval", "--run", str(tmp_path / "run"), "--protocol", "all", "--json"]) == 0
    captured = capsys.readouterr()
    evaluated = json.loads(captured.out.strip().splitlines()[-1])
    assert "knn_top1" not in evaluated and evaluated["feature_std_ratio"] > 0 and why in captured.err
    assert main(["eval", "--run", str(tmp_path / "run"), "--protocol", "finetune", "--labels", "10"]) == 2
    assert "--protocol finetune needs labels" in capsys.readouterr().err


def test_images_outside_the_class_folders_are_left_out_of_knn(tmp_path):
    write_images(tmp_path / "imgs", {"": 3, "ant": 10, "bee": 10})
    pretrain, test = _load(tmp_path / "imgs", "pretrain"), _load(tmp_path / "imgs", "test")
    assert pretrain.labels.tolist() == [-1] * 3 + [0] * 10 + [1] * 10
    assert test.labels.tolist() == [-1, 0, 1]
    summary = _train(tmp_path / "imgs", tmp_path / "run")
    assert 0.0 <= summary["knn_top1"] <= 1.0 and "feature_std" not in summary
