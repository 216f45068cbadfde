"""Issue 11's GPU measurements in one device call of at most 9 minutes, continued session after session.

In order, each step only while the time budget (``--budget-s``) lasts:
1. ``selfsup bench`` of every image method at batch 512 (full ResNet-18, bf16, channels_last): the step, the
   method's own backbone passes, the machinery alone, peak memory; and the host syncs of 3 trainer steps,
   counted by ``torch.cuda.set_sync_debug_mode`` (the GPU's own count of what tests/test_host_syncs.py
   counts on the CPU). Once per version of the code (a hash of ``src/selfsup``).
2. SimCLR's step with ``train.compile=step`` (inductor, then ``reduce-overhead``: CUDA graphs) against the
   eager step, with the compilation time. Once per version of the code.
3. The reproduction queue: CIFAR-10 (JPEG), ResNet-18, 200 epochs, batch 512 as in lightly's benchmark,
   kNN (k=200, t=0.1) beside lightly's published figures, in the order simclr, byol, moco, barlow_twins,
   swav, vicreg, simsiam, then the other image methods. A run starts only when all 200 epochs fit into the
   time left (estimated from this call's bench, or from an earlier attempt's epoch time); otherwise the
   first method not yet tried at this code version trains as many epochs of its 200-epoch schedule as fit,
   and is recorded as partial (kNN at the epoch it stopped).

Runs cannot be continued across device calls: a checkpoint with its optimizer state is 94 MB (SimCLR) to 189 MB (BYOL),
and a call carries in at most 64 MiB (the CIFAR tarballs take 20 of them) and brings back at most 16 MiB a
file. So each call trains whole runs (or partial ones that stay partial), and what continues from call to
call is the state file: ``benchmarks/gpu_state.json`` (read from the repository, written to ``--out``; commit
the returned copy). ``benchmarks/RESULTS_gpu.md`` is rendered from it (``gpu_report.py``) at every change.

The device call (the repository travels; the CIFAR tarballs travel as a carried ignored folder):

    here, once:  mkdir -p .data/cifar10-jpeg && cp ../shared/data/cifar10/{train,test}.tar.gz .data/cifar10-jpeg/
    run(timeout_s=600, carry=[".data/cifar10-jpeg"], command=
        "set -o pipefail; export PYTHONPATH=src PYTHONUNBUFFERED=1 SELFSUP_CACHE=/tmp/selfsup-cache; "
        "python3 benchmarks/gpu_suite.py --data-dir .data/cifar10-jpeg --out $OUT --budget-s 530 "
        "2>&1 | tee $OUT/suite.log")
    then, here:  cp FILES_AT/gpu_state.json FILES_AT/RESULTS_gpu.md benchmarks/  and commit both.

(The device's python3 has torch 2.11 and every dependency of selfsup; nothing is installed there.) 530 s of
budget leave a minute of the 10-minute command limit for Python's start and for the files to come back.

Lightly's own SimCLR beside ours (issue 11, item 5) is not run here: lightly imports torchvision, which cannot be
imported on the CPU machines (so nothing of it could be checked before spending device time), and its
benchmark script is lightly's code, not ours. What a session needs for it: the wheels of lightly 1.6.0 and of
hydra-core, omegaconf and antlr4-python3-runtime (torchvision and pytorch-lightning are on the device) carried
in ``.whl`` (device README), lightly's ``docs/source/getting_started/benchmarks/cifar10_benchmark.py`` carried in
an ignored folder with ``path_to_train``/``path_to_test`` pointed at the extracted tarballs (ImageFolder
layout), ``max_epochs`` and ``batch_size`` set to ours (e.g. 10 epochs, 512), and its epoch time and kNN
reported beside this suite's SimCLR row for the same epochs. lightly's loaders decode and augment on the CPU
(26 s an epoch on its A6000), so 10 epochs cost about two minutes of a call.

``--smoke``: the same code path on the CPU in seconds (synthetic 32 px images, width 4, batch 16, 3 epochs
a run, two methods), for tests/test_gpu_suite.py.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import gpu_report  # noqa: E402
from benchmarks.cifar10 import LIGHTLY_KNN_200, image_methods  # noqa: E402
from selfsup.commands.bench import bench, synthetic_images  # noqa: E402
from selfsup.data import load_dataset  # noqa: E402
from selfsup.run.preemption import Preempted  # noqa: E402
from selfsup.train.setup import Datasets, make_config, resolve_device  # noqa: E402
from selfsup.train.trainer import Trainer, fit  # noqa: E402

STATE = REPO / "benchmarks" / "gpu_state.json"
FIRST = ["simclr", "byol", "moco", "barlow_twins", "swav", "vicreg", "simsiam"]
SYNC_STEPS = 3


class Settings:
    """What a call measures and trains: the real thing, or the CPU smoke test of the same path."""

    def __init__(self, smoke: bool):
        self.smoke = smoke
        self.device = "cpu" if smoke else "cuda"
        self.batch = 16 if smoke else 512
        self.epochs = 3 if smoke else 200
        self.eval_every = 1 if smoke else 50
        self.bench_steps = 1 if smoke else 10
        self.size = ["backbone.width=4"] if smoke else []
        self.steps_per_epoch = 2 if smoke else 50_000 // 512
        self.queue = ["simclr", "byol"] if smoke else FIRST + sorted(set(image_methods()) - set(FIRST))
        self.bench_methods = self.queue if smoke else sorted(image_methods())
        self.compile_modes = [] if smoke else ["default", "reduce-overhead"]

    def run_settings(self, epochs: int, eval_every: int) -> list[str]:
        return self.size + [
            f"train.epochs={epochs}", f"train.batch_size={self.batch}", f"train.device={self.device}",
            "train.progress=false", f"eval.every={eval_every}", "eval.plots=false",
        ] + (["eval.linear_epochs=1"] if self.smoke else [])


class Clock:
    """Seconds left of the call's budget."""

    def __init__(self, budget_s: float):
        self.deadline = time.monotonic() + budget_s

    def left(self) -> float:
        return self.deadline - time.monotonic()


def code_version() -> str:
    """A short hash of the library's source and presets: bench rows are per version of the code."""
    digest = hashlib.sha256()
    root = REPO / "src" / "selfsup"
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def load_state(path: Path) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    return {"bench": [], "compile": [], "runs": []}


def save(state: dict[str, Any], out: Path) -> None:
    """The state file and the results rendered from it, both in ``out`` (written at every change)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_state.json").write_text(json.dumps(state, indent=1) + "\n")
    (out / "RESULTS_gpu.md").write_text(gpu_report.render(state))


def guarded(what: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()``, or a row saying why it failed: one broken method must not stop the call."""
    try:
        return fn()
    except Exception as err:  # recorded in the state, printed in full here
        traceback.print_exc()
        return {"error": " ".join(f"{type(err).__name__}: {err}".split())[:300], "what": what}


# ---- 1. bench and host syncs ------------------------------------------------------------------------


def host_syncs_per_step(method: str, settings: Settings) -> float | None:
    """Synchronising CUDA calls per trainer step (after one warm-up step), as the GPU itself counts them."""
    if settings.device != "cuda":
        return None
    data = synthetic_images(settings.batch * (SYNC_STEPS + 1))
    cfg = make_config(method, "synthetic", data, assignments=settings.run_settings(2, 0))
    trainer = Trainer(cfg, Datasets(data, data, data))
    trainer.method.train()
    trainer.method.on_epoch_start(0)
    order = trainer._epoch_order()
    batches = [order[i * settings.batch : (i + 1) * settings.batch] for i in range(SYNC_STEPS + 1)]
    trainer._step(batches[0], trainer.pretrain_data[batches[0]])
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for indices in batches[1:]:
                trainer._step(indices, trainer.pretrain_data[indices])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    for w in syncs[:3]:
        print(f"  {method}: sync at {w.filename}:{w.lineno}: {w.message}", flush=True)
    return len(syncs) / SYNC_STEPS


def bench_phase(state: dict[str, Any], settings: Settings, clock: Clock, code: str, out: Path) -> dict[str, float]:
    """Bench every image method once per code version (a failure too); returns this version's step ms by method."""
    done = {row["method"]: row for row in state["bench"] if row["code"] == code}
    for method in settings.bench_methods:
        if method in done or (clock.left() < 60 and not settings.smoke):
            continue
        print(f"=== bench {method}", flush=True)
        row = guarded(method, lambda: bench(
            method, batch_size=settings.batch, steps=settings.bench_steps, warmup=2, device=settings.device,
            assignments=settings.size,
        ))
        if "error" not in row:
            row["syncs_per_step"] = guarded(method, lambda: {"n": host_syncs_per_step(method, settings)}).get("n")
        row.update(method=method, code=code, when=now())
        state["bench"].append(row)
        done[method] = row
        save(state, out)
    return {m: r["step_ms"] for m, r in done.items() if "step_ms" in r}


def compile_phase(state: dict[str, Any], settings: Settings, clock: Clock, code: str, out: Path) -> None:
    """SimCLR's compiled step (each mode once per code version), its compilation time included."""
    for mode in settings.compile_modes:
        if any(r["code"] == code and r["mode"] == mode for r in state["compile"]) or clock.left() < 240:
            continue
        print(f"=== compile simclr, mode {mode}", flush=True)
        start = time.perf_counter()
        row = guarded(f"compile {mode}", lambda: bench(
            "simclr", batch_size=settings.batch, steps=settings.bench_steps, warmup=2, device=settings.device,
            assignments=settings.size + ["train.compile=step", f"train.compile_mode={mode}"],
        ))
        row.update(mode=mode, code=code, when=now(), wall_s=time.perf_counter() - start)
        state["compile"].append(row)
        save(state, out)


# ---- 3. the reproduction queue ------------------------------------------------------------------------


def load_cifar(data_dir: str, settings: Settings) -> tuple[str, Datasets]:
    """(data SPEC, datasets): CIFAR-10 (JPEG) from its tarballs, or synthetic images for the smoke test."""
    if settings.smoke:
        images = synthetic_images(settings.steps_per_epoch * settings.batch)
        return "synthetic", Datasets(images, images, synthetic_images(settings.batch))
    spec = f"folder:{data_dir}"
    train = load_dataset(spec, None, "train")
    return spec, Datasets(train, train, load_dataset(spec, None, "test"))


def epoch_estimate(method: str, state: dict[str, Any], step_ms: dict[str, float], code: str, steps: int) -> float | None:
    """Seconds an epoch of ``steps`` steps: an earlier run's at this code version, else this version's bench
    step x 1.15 (the views of real images, the metrics, the online probe's share)."""
    measured = [r["epoch_s"] for r in state["runs"] if r["method"] == method and r["code"] == code and r.get("epoch_s")]
    if measured:
        return max(measured)
    if method in step_ms:
        return step_ms[method] / 1000 * steps * 1.15
    return None


def plan(
    state: dict[str, Any], settings: Settings, step_ms: dict[str, float], code: str, seconds: float
) -> tuple[str, int] | None:
    """(method, epochs to train now) for ``seconds``: the first method of the queue whose whole run fits, else a
    partial run of the first one not yet tried at this code version; None when nothing fits.

    A method whose run at this code version failed or was stopped by the deadline is not tried again until the
    code changes (the same estimate would stop it again).
    """
    done = {r["method"] for r in state["runs"] if r["status"] == "done"}
    blocked = {r["method"] for r in state["runs"] if r["code"] == code and r["status"] in ("failed", "started")}
    tried = {r["method"] for r in state["runs"] if r["code"] == code}
    pending = [m for m in settings.queue if m not in done | blocked]
    fixed_s = 5 if settings.smoke else 60  # the model, the first epoch's kernels, evaluations, the linear probe
    estimates = {m: epoch_estimate(m, state, step_ms, code, settings.steps_per_epoch) for m in pending}
    for method in pending:
        if estimates[method] is not None and fixed_s + settings.epochs * estimates[method] <= seconds:
            return method, settings.epochs
    for method in pending:
        if method not in tried and estimates[method] is not None:
            epochs = math.floor((seconds - fixed_s) / estimates[method])
            return (method, epochs) if epochs >= 1 else None
    return None


def train_one(
    method: str, epochs: int, spec: str, datasets: Datasets, settings: Settings, row: dict[str, Any], runs: Path,
    extra: list[str],
) -> dict[str, Any]:
    """Train ``method`` for ``epochs`` of its ``settings.epochs``-epoch schedule and complete ``row`` with the result."""
    full = epochs == settings.epochs
    assignments = settings.run_settings(settings.epochs, settings.eval_every if full else epochs) + extra
    out_dir = runs / method
    start = time.perf_counter()
    try:
        summary = fit(method, spec, out_dir=out_dir, assignments=assignments, datasets=datasets,
                      stop_after_epoch=None if full else epochs, overwrite=True)
        row["status"] = "done" if full else "partial"
    except Preempted:  # the call's deadline (``watchdog``): what the run finished is still a partial row
        summary, row["status"] = {}, "stopped"
    history = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    knn = {str(r["epoch"]): round(r["knn_top1"], 4) for r in history if "knn_top1" in r}
    row.update(
        epochs_run=len(history), knn_curve=knn, knn_top1=summary.get("knn_top1", knn.get(str(len(history)))),
        linear_top1=summary.get("linear_top1"), wall_s=round(time.perf_counter() - start),
        epoch_s=sorted(r["epoch_s"] for r in history)[len(history) // 2] if history else None,
    )
    return row


def queue_phase(
    state: dict[str, Any], settings: Settings, clock: Clock, code: str, step_ms: dict[str, float], out: Path,
    args: argparse.Namespace,
) -> None:
    """Train what the time left allows, one run after another, each recorded before it starts."""
    loaded: tuple[str, Datasets] | None = None
    started = 0
    while args.max_runs is None or started < args.max_runs:
        load_s = 0.0 if loaded is not None or settings.smoke else state.get("data_load_s", 60.0)
        if plan(state, settings, step_ms, code, clock.left() - load_s) is None:
            return
        if loaded is None:
            start = time.perf_counter()
            loaded = load_cifar(args.data_dir, settings)
            state["data_load_s"] = round(time.perf_counter() - start, 1)
        chosen = plan(state, settings, step_ms, code, clock.left())
        if chosen is None:
            return
        method, epochs = chosen
        print(f"=== train {method}: {epochs} of {settings.epochs} epochs, {clock.left():.0f} s left", flush=True)
        device = resolve_device(settings.device)
        row: dict[str, Any] = {
            "method": method, "code": code, "when": now(), "status": "started", "epochs": settings.epochs,
            "batch": settings.batch, "lightly_knn": LIGHTLY_KNN_200.get(method), "settings": args.queue_set,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        }
        state["runs"].append(row)
        save(state, out)  # a run the command's time limit kills is known as started, and not started again
        result = guarded(method, lambda: train_one(method, epochs, *loaded, settings, row, Path(args.runs),
                                                   args.queue_set))
        if "error" in result:
            row.update(status="failed", error=result["error"])
        save(state, out)
        started += 1


def watchdog(seconds: float) -> None:
    """SIGTERM to this process after ``seconds``: a run in progress saves, stops (``Preempted``) and is recorded."""
    signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
    signal.setitimer(signal.ITIMER_REAL, seconds)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where gpu_state.json, RESULTS_gpu.md (and the log) go: $OUT")
    parser.add_argument("--state", default=str(STATE), help="the state to continue from (default: the committed one)")
    parser.add_argument("--data-dir", default=str(REPO / ".data" / "cifar10-jpeg"),
                        help="folder holding CIFAR-10 (JPEG)'s train.tar.gz and test.tar.gz")
    parser.add_argument("--budget-s", type=float, default=530, help="seconds this call may take")
    parser.add_argument("--runs", default="/tmp/gpu_suite_runs", help="run folders (not brought back)")
    parser.add_argument("--max-runs", type=int, help="start at most this many training runs")
    parser.add_argument("--queue-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of every queue run (e.g. train.compile=step), recorded with its row")
    parser.add_argument("--skip", default="", help="comma list of phases to leave out: bench, compile, queue")
    parser.add_argument("--smoke", action="store_true", help="the CPU smoke test: tiny settings, synthetic data")
    return parser.parse_args(argv)


def main(argv: list[str]) -> dict[str, Any]:
    args = parse_args(argv)
    clock, settings, out = Clock(args.budget_s), Settings(args.smoke), Path(args.out)
    if not settings.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_suite: no CUDA device here; use --smoke for the CPU check")
    skip = set(filter(None, args.skip.split(",")))
    code, state = code_version(), load_state(Path(args.state))
    print(f"gpu_suite: code {code}, {clock.left():.0f} s budget, torch {torch.__version__}", flush=True)
    save(state, out)
    step_ms = {} if "bench" in skip else bench_phase(state, settings, clock, code, out)
    if "compile" not in skip:
        compile_phase(state, settings, clock, code, out)
    if "queue" not in skip:
        if not settings.smoke:
            watchdog(clock.left() + 20)
        queue_phase(state, settings, clock, code, step_ms, out, args)
    print(f"gpu_suite: done, {clock.left():.0f} s of the budget left", flush=True)
    return state


if __name__ == "__main__":
    main(sys.argv[1:])
