"""Kills at random moments, then resume: does every run end exactly where an uninterrupted run ends?

    .venv/bin/python benchmarks/faults.py [--kills 3] [--when anytime|training] [--methods simclr moco ...]
        [--seed 0] [--out /tmp/faults]

For each method: one uninterrupted ``selfsup train`` on digits, then the same run killed with SIGKILL
``--kills`` times, each time continued with ``--resume`` (or, when the kill came before the first
checkpoint, started again with ``--overwrite``), then run to its end. ``--when anytime``: each kill at a
moment drawn uniformly over the uninterrupted run's wall time after the process starts (imports and
setup included); ``training``: uniformly over its training time, counted from the moment the process
holds the run folder's lock (training, checkpoint writes and evaluation alike). Compared with the uninterrupted
run: every tensor of the final checkpoint (weights, buffers, runtime state, optimizer state) bit for bit,
metrics.jsonl (all but the wall-clock fields) and the final kNN. Also counted: kills that left a temporary
file (a kill during a save) and resumes that cut metrics.jsonl back. Prints one markdown row per method.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from selfsup.run.checkpoint import load_checkpoint

SETTINGS = [
    "backbone.width=4", "train.batch_size=128", "train.epochs=4", "train.device=cpu", "train.progress=false",
    "train.checkpoint_every=2", "train.checkpoint_every_steps=3", "eval.every=2", "eval.plots=false",
    "eval.knn_k=20", "eval.linear_epochs=2", "head.proj_out_dim=16",
]
EXTRA = {  # small heads, and each method's state switched on early (as in tests/test_faults.py)
    "simclr": ["head.proj_hidden_dim=32"],
    "moco": ["head.proj_hidden_dim=32", "head.queue_size=256"],
    "mocov3": ["head.proj_hidden_dim=32", "head.pred_hidden_dim=32"],
    "byol": ["head.proj_hidden_dim=32", "head.pred_hidden_dim=32"],
    "swav": ["head.proj_hidden_dim=32", "head.num_prototypes=30", "head.queue_size=256", "head.queue_start_epoch=0",
             "head.freeze_prototypes_epochs=1"],
    "deepclusterv2": ["head.proj_hidden_dim=32", "head.num_prototypes=[20, 20]", "head.kmeans_iters=3"],
    "instdisc": ["head.noise_samples=64"],
    "adco": ["head.proj_hidden_dim=32", "head.num_negatives=256"],
}
TIMING = ("images_per_s", "epoch_s")


def train(method: str, run: Path, *flags: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "selfsup.cli", "train", "--out", str(run), *flags]
    if "--resume" not in flags:
        argv += ["--method", method, "--data", "digits"] + [a for s in SETTINGS + EXTRA[method] for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def rows(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def same(a, b) -> bool:
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def holds_lock(process: subprocess.Popen, run: Path) -> bool:
    lock = run / ".lock"
    try:
        return lock.read_text().startswith(f"pid={process.pid} ")
    except FileNotFoundError:
        return False


def wait_for_lock(process: subprocess.Popen, run: Path) -> None:
    while process.poll() is None and not holds_lock(process, run):
        time.sleep(0.002)


def killed_run(method: str, run: Path, kills: int, span: float, training: bool, rng: random.Random) -> dict:
    """Kill ``kills`` times at uniform moments in [0, span] after each start (or lock), then let it finish."""
    stats = {"kills": 0, "mid_save": 0, "cut_back": 0, "restarts": 0, "resumes": 0}
    flags: tuple[str, ...] = ()
    for attempt in range(kills + 1):
        process = train(method, run, *flags)
        if attempt < kills:
            if training:
                wait_for_lock(process, run)
            deadline = time.perf_counter() + rng.uniform(0.0, span)
            while process.poll() is None and time.perf_counter() < deadline:
                time.sleep(0.002)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                stats["kills"] += 1
        _, err = process.communicate()
        if process.returncode == 0:
            return stats
        if process.returncode != -signal.SIGKILL:
            raise RuntimeError(f"{method}: exit {process.returncode}: {err.strip()}")
        stats["mid_save"] += any(p.name.endswith(".tmp") for p in run.rglob(".*"))
        checkpoint = run / "checkpoints" / "last.pt"
        if checkpoint.is_file():
            stats["cut_back"] += len(rows(run)) > len(load_checkpoint(checkpoint)["history"])
            flags, stats["resumes"] = ("--resume",), stats["resumes"] + 1
        else:
            flags, stats["restarts"] = ("--overwrite",), stats["restarts"] + 1
    process = train(method, run, *flags)
    _, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{method}: exit {process.returncode}: {err.strip()}")
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(EXTRA))
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--when", choices=["anytime", "training"], default="training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/selfsup-faults"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print("| method | kills | during a save | resumed | restarted (killed before 1st checkpoint) | metrics cut back "
          "| weights, state, optimizer | metrics rows | kNN | kill window s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method in args.methods:
        root = args.out / method
        shutil.rmtree(root, ignore_errors=True)
        start = time.perf_counter()
        whole = train(method, root / "whole")
        wait_for_lock(whole, root / "whole")
        locked = time.perf_counter()
        _, err = whole.communicate()
        if whole.returncode != 0:
            raise RuntimeError(f"{method}: {err.strip()}")
        span = time.perf_counter() - (locked if args.when == "training" else start)
        stats = killed_run(method, root / "killed", args.kills, span, args.when == "training", rng)
        a, b = (load_checkpoint(root / r / "checkpoints" / "last.pt") for r in ("whole", "killed"))
        state = all(same(a[k], b[k]) for k in ("method", "runtime", "optimizer"))
        knn = [json.loads((root / r / "summary.json").read_text())["knn_top1"] for r in ("whole", "killed")]
        print(f"| {method} | {stats['kills']} | {stats['mid_save']} | {stats['resumes']} | {stats['restarts']} | "
              f"{stats['cut_back']} | {'bitwise equal' if state else 'DIFFERENT'} | "
              f"{'equal' if rows(root / 'whole') == rows(root / 'killed') else 'DIFFERENT'} | "
              f"{knn[1]:.4f} vs {knn[0]:.4f} | {span:.1f} |", flush=True)


if __name__ == "__main__":
    main()
