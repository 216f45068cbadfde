"""The trainer end to end on digits: run folder, resume equivalence and extension, atomic checkpoints, the run
folder's rules (refusal, --overwrite, numbered folders), the divergence guard."""

import json
import os

import pytest
import torch
import yaml

import selfsup.train.trainer as trainer_module
from selfsup.config.schedule import warmup_cosine
from selfsup.run.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from selfsup.run.divergence import Diverged, DivergenceGuard
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
    assert on_disk == {key: value for key, value in summary.items() if key != "run"}  # fit adds where the run is
    assert summary["run"] == str(run)


def test_resume_reaches_the_same_numbers_as_an_uninterrupted_run(tmp_path):
    whole = fit("simclr", "digits", out_dir=tmp_path / "whole", assignments=TINY, datasets=digits())
    first = fit("simclr", "digits", out_dir=tmp_path / "split", assignments=TINY, datasets=digits(), stop_after_epoch=1)
    assert first == {"stopped_at_epoch": 1, "run": str(tmp_path / "split")}
    resumed = fit(out_dir=tmp_path / "split", resume=True, datasets=digits())
    rows = lambda run: [{k: v for k, v in json.loads(x).items() if k not in ("images_per_s", "epoch_s")}  # noqa: E731
                        for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    assert rows("split") == rows("whole")
    assert resumed["knn_top1"] == whole["knn_top1"]
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")["method"]
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["method"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


SHORT = DIGITS_SMALL + ["backbone.width=4", "train.epochs=2", "eval.linear_epochs=2", "head.proj_hidden_dim=32",
                        "head.proj_out_dim=16"]


def test_resume_with_more_epochs_extends_the_run_and_replans_its_schedule(tmp_path, capsys):
    run = tmp_path / "run"
    fit("simclr", "digits", out_dir=run, assignments=SHORT, datasets=digits())
    before = (run / "metrics.jsonl").read_text().splitlines()
    (run / "checkpoints" / ".last.pt.x1.tmp").write_bytes(b"left by a kill during a save")
    fit(out_dir=run, resume=True, overrides={"train": {"epochs": 4}}, datasets=digits())
    assert "extending the run from 2 to 4 epochs" in capsys.readouterr().err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert (run / "metrics.jsonl").read_text().splitlines()[:2] == before and [r["epoch"] for r in rows] == [1, 2, 3, 4]
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == 4
    assert cfg["recipe"]["resumed"] == [{"at_epoch": 2, "at_step": rows[1]["step"], "epochs": [2, 4],
                                         "schedule": cfg["recipe"]["resumed"][0]["schedule"]}]
    steps_per_epoch, optim = rows[0]["step"], cfg["optim"]
    base = optim["lr"] * cfg["train"]["batch_size"] / 256
    for row in rows[2:]:  # the last step of epochs 3 and 4 follows the 4-epoch plan
        expected = warmup_cosine(row["step"] - 1, 4 * steps_per_epoch, optim["warmup_epochs"] * steps_per_epoch,
                                 optim["min_lr_ratio"])
        assert row["lr"] == pytest.approx(base * expected)
    assert rows[3]["lr"] < rows[2]["lr"] and not list(run.rglob(".*"))  # temporary leftover and lock gone
    with pytest.raises(ValueError, match="already trained 4 epoch"):
        fit(out_dir=run, resume=True, overrides={"train": {"epochs": 3}}, datasets=digits())


def test_a_folder_holding_a_run_is_refused_or_replaced_by_its_manifest(tmp_path):
    run = tmp_path / "run"
    fit("simclr", "digits", out_dir=run, assignments=SHORT + ["train.epochs=1"], datasets=digits())
    (run / "notes.txt").write_text("from the first run")
    snapshot = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="already holds a run: add --resume .* --overwrite"):
        fit("byol", "digits", out_dir=run, assignments=["train.epochs=1"], datasets=digits())
    with pytest.raises(ValueError, match=r"did not write \(notes.txt\): refusing to delete anything"):
        fit("simclr", "digits", out_dir=run, assignments=SHORT + ["train.epochs=1"], datasets=digits(), overwrite=True)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == snapshot
    (run / "notes.txt").unlink()  # --overwrite deletes what the manifest lists, nothing else
    fit("simclr", "digits", out_dir=run, assignments=SHORT + ["train.epochs=1", "train.seed=1"], datasets=digits(),
        overwrite=True)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seed"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("not a run")
    with pytest.raises(ValueError, match="not a run folder .* refusing to clear it"):
        fit("simclr", "digits", out_dir=tmp_path / "mine", overwrite=True, datasets=digits())


def test_without_out_each_run_gets_a_new_numbered_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        fit("simclr", "digits", assignments=SHORT + ["train.epochs=1", "eval.linear_epochs=1"], datasets=digits())
    runs = sorted(p.name for p in (tmp_path / "runs" / "simclr-digits").iterdir())
    assert runs == ["version_0", "version_1"]
    assert all((tmp_path / "runs" / "simclr-digits" / v / "summary.json").is_file() for v in runs)


def poison_views(monkeypatch, bad_steps: set[int]) -> None:
    """Make the views of the given (1-based) steps nan, so that those steps' losses are not finite."""
    real = trainer_module.build_views

    def build(*args, **kwargs):
        maker, calls = real(*args, **kwargs), [0]

        def views(batch):
            calls[0] += 1
            made = maker(batch)
            return [v * float("nan") for v in made] if calls[0] in bad_steps else made

        return views

    monkeypatch.setattr(trainer_module, "build_views", build)


def test_a_nan_loss_stops_at_its_step_and_the_last_checkpoint_stays_good(tmp_path, monkeypatch):
    poison_views(monkeypatch, {7})
    run = tmp_path / "run"
    with pytest.raises(Diverged, match="the loss became nan at step 7: training stopped"):
        fit("simclr", "digits", out_dir=run, assignments=SHORT + ["train.checkpoint_every_steps=2"], datasets=digits())
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert saved["step"] == 6  # the last checkpoint before the bad step, written before it happened
    assert all(torch.isfinite(v).all() for v in saved["method"].values() if v.is_floating_point())
    assert not (run / ".lock").exists()


def test_on_nan_skip_skips_the_step_and_counts_it(tmp_path, monkeypatch):
    poison_views(monkeypatch, {3, 12})
    run = tmp_path / "run"
    fit("simclr", "digits", out_dir=run, assignments=SHORT + ["train.on_nan=skip"], datasets=digits())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [1, 1] and all(r["loss"] == r["loss"] for r in rows)  # not nan
    weights = load_checkpoint(run / "checkpoints" / "last.pt")["method"]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_on_a_gpu_the_nan_check_stays_on_the_device_until_read():
    guard = DivergenceGuard("stop", torch.device("cpu"))
    guard.deferred = True  # as on a GPU: admit() never reads the loss on the host
    assert guard.admit(torch.tensor(1.0), 0) and guard.admit(torch.tensor(float("inf")), 4)
    assert guard.admit(torch.tensor(float("nan")), 5)  # training continues until the next read
    with pytest.raises(Diverged, match="at step 5"):  # the first bad step, recorded on the device
        guard.check()
    assert DivergenceGuard("stop", torch.device("cpu")).deferred is False


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


@pytest.mark.parametrize("setting, expected", [("auto", False), ("true", True)])
def test_channels_last_on_a_cpu_only_when_asked_and_training_alike(tmp_path, setting, expected):
    from selfsup.train.setup import make_config

    resnet = DIGITS_SMALL + ["backbone.name=resnet18", "backbone.stem=cifar", "backbone.width=4", "train.epochs=1",
                             f"train.channels_last={setting}"]
    trainer = trainer_module.Trainer(make_config("simclr", "digits", digits().pretrain, assignments=resnet), digits())
    conv = [m for m in trainer.method.modules() if isinstance(m, torch.nn.Conv2d)][-1]  # 1 input channel is both
    assert trainer.channels_last == expected == conv.weight.is_contiguous(memory_format=torch.channels_last)
    losses = {}
    for name, value in (("nchw", "auto"), ("nhwc", setting)):
        fit("simclr", "digits", out_dir=tmp_path / name, datasets=digits(),
            assignments=resnet[:-1] + [f"train.channels_last={value}"])
        losses[name] = json.loads((tmp_path / name / "metrics.jsonl").read_text())["loss"]
    assert losses["nhwc"] == pytest.approx(losses["nchw"], rel=1e-3)
