"""The trainer end to end on digits: run folder, resume equivalence, atomic checkpoints, errors."""

import json
import os

import pytest
import torch

from selfsup.train.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from selfsup.train.trainer import fit
from tests.helpers import DIGITS_SMALL, digits

TINY = DIGITS_SMALL + ["backbone.width=4", "train.epochs=3", "eval.every=2", "eval.linear_every=2",
                      "eval.linear_epochs=5", "eval.plots=true"]


def test_run_folder_holds_everything_of_the_contract(tmp_path):
    summary = fit("simclr", "digits", out_dir=tmp_path / "run", assignments=TINY, datasets=digits())
    run = tmp_path / "run"
    for name in ["config.yaml", "metrics.jsonl", "checkpoints/last.pt", "encoder.safetensors", "summary.json",
                 "curves.png", "embedding_map.png"]:
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for key in ["loss", "lr", "images_per_s", "z_std", "z_std_ratio", "effective_rank", "alignment", "uniformity"]:
        assert all(key in r for r in records), key
    assert [("knn_top1" in r) for r in records] == [False, True, True]
    assert [("linear_top1" in r) for r in records] == [False, True, True]
    on_disk = json.loads((run / "summary.json").read_text())
    assert set(on_disk) >= {"knn_top1", "linear_top1", "wall_s", "images_per_s"}
    assert on_disk == pytest.approx(summary)


def test_resume_reaches_the_same_numbers_as_an_uninterrupted_run(tmp_path):
    whole = fit("simclr", "digits", out_dir=tmp_path / "whole", assignments=TINY, datasets=digits())
    first = fit("simclr", "digits", out_dir=tmp_path / "split", assignments=TINY, datasets=digits(), stop_after_epoch=1)
    assert first == {"stopped_at_epoch": 1}
    resumed = fit(out_dir=tmp_path / "split", resume=True, datasets=digits())
    losses = lambda run: [json.loads(x)["loss"] for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert losses("split") == pytest.approx(losses("whole"), rel=1e-6, abs=1e-7)
    assert resumed["knn_top1"] == pytest.approx(whole["knn_top1"])
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")["method"]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["method"]
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"epoch": 1})

    def crash_halfway(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash_halfway)
    assert load_checkpoint(path) == {"epoch": 1}
    assert os.listdir(path.parent) == ["last.pt"]  # no temporary file left behind
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable"):
        load_checkpoint(path)
