"""Faults with real processes: a training process killed with SIGKILL right after one of its checkpoints, then
resumed, ends bitwise equal to an uninterrupted run, for every method with state beyond its weights; SIGTERM and
SIGUSR1 save a checkpoint and exit for requeue; a second training on a folder in use is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from selfsup.cli import main
from selfsup.run.checkpoint import load_checkpoint
from selfsup.run.epoch_record import TIMING_KEYS
from selfsup.run.preemption import REQUEUE_EXIT_CODE
from selfsup.train.trainer import fit
from tests.helpers import digits

# 3 epochs of 9 steps; checkpoints every 4 steps and at the end of epochs 2 and 3 (so a kill after epoch 1's
# metrics row resumes from a checkpoint that predates it).
SETTINGS = [
    "backbone.width=4", "train.batch_size=128", "train.epochs=3", "train.device=cpu", "train.progress=false",
    "train.checkpoint_every=2", "train.checkpoint_every_steps=4", "eval.every=0", "eval.plots=false",
    "eval.knn_k=20", "eval.linear_epochs=2",
]
SMALL_HEADS = ["head.proj_hidden_dim=32", "head.proj_out_dim=16"]
# Each method's state beyond its weights, switched on within the first steps; and after which checkpoint
# write (1: step 4, 2: step 8, 3: step 12, 4: step 16, 5: step 18) the kill comes.
STATEFUL = {
    "moco": (SMALL_HEADS + ["head.queue_size=256"], 2),  # queue of keys, momentum encoder
    "mocov3": (SMALL_HEADS + ["head.pred_hidden_dim=32"], 3),  # EMA momentum schedule (logged)
    "byol": (SMALL_HEADS + ["head.pred_hidden_dim=32"], 1),  # EMA momentum schedule (logged)
    "swav": (SMALL_HEADS + ["head.num_prototypes=30", "head.queue_size=256", "head.queue_start_epoch=0",
                            "head.freeze_prototypes_epochs=1"], 3),  # feature queue, prototype freezing, epoch
    "deepclusterv2": (SMALL_HEADS + ["head.num_prototypes=[20, 20]", "head.kmeans_iters=3"], 4),  # memory, k-means
    "instdisc": (["head.proj_out_dim=16", "head.noise_samples=64"], 2),  # memory bank, partition function
    "adco": (SMALL_HEADS + ["head.num_negatives=256"], 1),  # negatives filled from keys, then trained adversarially
}


def start_training(run: Path, method: str, settings: list[str]) -> subprocess.Popen:
    """``selfsup train`` in a new process, one thread like the tests (so that both compute bit for bit alike)."""
    argv = [sys.executable, "-m", "selfsup.cli", "train", "--method", method, "--data", "digits", "--out", str(run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(argv + [a for s in settings for a in ("--set", s)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def after_checkpoint_writes(process: subprocess.Popen, run: Path, writes: int, action) -> threading.Thread:
    """A thread that calls ``action()`` as soon as ``checkpoints/last.pt`` has been (re)written ``writes`` times."""
    path = run / "checkpoints" / "last.pt"

    def watch() -> None:
        seen: set[tuple[int, int]] = set()
        while process.poll() is None and len(seen) < writes:
            try:
                stat = os.stat(path)  # each atomic write renames a new file onto the path
                seen.add((stat.st_ino, stat.st_mtime_ns))
            except FileNotFoundError:
                pass
            time.sleep(0.001)
        if process.poll() is None:
            action()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def rows(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def assert_same_state(a: object, b: object, where: str = "") -> None:
    """Bitwise equality of nested checkpoint state (tensors, dicts, lists, numbers)."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def assert_same_run(whole: Path, resumed: Path) -> None:
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (whole, resumed))
    for part in ("method", "runtime", "optimizer"):
        assert_same_state(a[part], b[part], part)
    assert a["step"] == b["step"] == 27 and b["partial"] is None
    assert rows(resumed) == rows(whole) and len(rows(whole)) == 3
    assert json.loads((resumed / "summary.json").read_text())["knn_top1"] == (
        json.loads((whole / "summary.json").read_text())["knn_top1"]
    )
    leftovers = [p.name for p in resumed.rglob(".*")]
    assert leftovers == [], leftovers  # no temporary file, no lock


@pytest.mark.parametrize("method", sorted(STATEFUL))
def test_sigkill_after_a_checkpoint_then_resume_equals_an_uninterrupted_run(method, tmp_path, capsys):
    extra, writes = STATEFUL[method]
    settings = SETTINGS + extra
    killed = tmp_path / "killed"
    process = start_training(killed, method, settings)
    killer = after_checkpoint_writes(process, killed, writes, lambda: process.send_signal(signal.SIGKILL))
    fit(method, "digits", out_dir=tmp_path / "whole", assignments=settings, datasets=digits())  # meanwhile
    killer.join(timeout=120)
    assert process.wait(timeout=120) == -signal.SIGKILL, process.stderr.read()
    saved = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert 0 < saved["step"] < 27 and not (killed / "summary.json").exists()
    assert (killed / ".lock").read_text().startswith(f"pid={process.pid} ")  # left behind by the killed holder
    fit(out_dir=killed, resume=True, datasets=digits())
    assert f"took over the stale lock of process {process.pid} on" in capsys.readouterr().err
    assert_same_run(tmp_path / "whole", killed)


@pytest.fixture(scope="session")
def simclr_whole(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("simclr") / "whole"
    fit("simclr", "digits", out_dir=run, assignments=SETTINGS + ["train.checkpoint_every_steps=0"], datasets=digits())
    return run


def test_kill_after_a_metrics_row_resumes_from_an_older_checkpoint_and_cuts_the_row(simclr_whole, tmp_path):
    """Epoch 1's row is logged at step 9, its checkpoint is the one of step 8: the row must not appear twice."""
    run = tmp_path / "killed"
    process = start_training(run, "simclr", SETTINGS)
    while process.poll() is None and not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").stat().st_size:
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert load_checkpoint(run / "checkpoints" / "last.pt")["history"] == [] and len(rows(run)) >= 1
    fit(out_dir=run, resume=True, datasets=digits())
    assert [r["epoch"] for r in rows(run)] == [1, 2, 3]
    assert_same_run(simclr_whole, run)


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_preemption_signal_saves_at_the_next_step_and_exits_for_requeue(signal_number, simclr_whole, tmp_path, capsys):
    run = tmp_path / "preempted"
    process = start_training(run, "simclr", SETTINGS)
    after_checkpoint_writes(process, run, 1, lambda: None).join(timeout=120)
    # while it trains, a second training on the same folder is refused, naming the holder
    assert main(["train", "--method", "simclr", "--data", "digits", "--out", str(run)]) == 2
    assert f"in use by process {process.pid} on" in capsys.readouterr().err
    process.send_signal(signal_number)
    _, err = process.communicate(timeout=120)
    assert process.returncode == REQUEUE_EXIT_CODE, err
    assert err.strip().splitlines()[-1].startswith(f"selfsup: stopped by {signal.Signals(signal_number).name}")
    assert "Traceback" not in err and f"--resume --out {run}" in err
    saved = load_checkpoint(run / "checkpoints" / "last.pt")
    assert saved["partial"] is not None and 4 <= saved["step"] < 27  # a step boundary inside an epoch
    assert not (run / ".lock").exists()  # released on the way out
    fit(out_dir=run, resume=True, datasets=digits())
    assert_same_run(simclr_whole, run)
