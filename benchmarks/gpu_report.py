"""benchmarks/RESULTS_gpu.md, rendered from the GPU suite's state file (benchmarks/gpu_state.json).

    python benchmarks/gpu_report.py [STATE] [OUT]    # re-render by hand (default: the committed files)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HEADER = """# GPU results (issue 11)

Written by `benchmarks/gpu_suite.py` from `benchmarks/gpu_state.json` at every step of a device call; not
edited by hand. "code" is a hash of `src/selfsup` at the time (`gpu_suite.code_version`): rows of one code
version measure the same code. The suite's docstring has the device command.
"""

REPRO = """
## Reproduction: CIFAR-10 (JPEG), ResNet-18, 200 epochs, batch 512

Weighted kNN (k=200, t=0.1) of the frozen encoder on the 10,000 test images, the 50,000 training images as
its memory; each method's `cifar` preset otherwise. lightly's figures are its published 200-epoch kNN at batch
512 on the original (PNG) CIFAR-10. A partial row trained the first epochs of the 200-epoch schedule (its kNN
is at the epoch it stopped) and cannot be continued: each call trains whole runs.

"""
REPRO_TABLE = """| method | status | epochs | kNN | lightly kNN | kNN / lightly | linear | s/epoch | run s | date (UTC) | code | device |
|---|---|---|---|---|---|---|---|---|---|---|---|
"""

BENCH = """
## `selfsup bench` at batch 512 (full ResNet-18, bf16, channels_last)

`selfsup bench --method M --batch-size 512 --steps 10 --device cuda`: step = the whole training step; own
passes = the method's own backbone passes replayed on the bare encoder; machinery = the step with every
encoder call answered by its recorded output. Syncs/step: synchronising CUDA calls in a trainer step
(`torch.cuda.set_sync_debug_mode`), the issue's goal being 0. The latest row per method and code version.

| date (UTC) | code | method | device | step ms | own passes ms | machinery ms | step / own | (own + machinery) / own | two views ms | peak GB | syncs/step |
|---|---|---|---|---|---|---|---|---|---|---|---|
"""

COMPILE = """
## SimCLR's step compiled (`--set train.compile=step`)

| date (UTC) | code | mode | step ms | eager step ms (same code) | step / own passes | call s (compilation included) |
|---|---|---|---|---|---|---|
"""


def _num(value: Any, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _latest(rows: list[dict[str, Any]], key: Any) -> list[dict[str, Any]]:
    """The last row for each ``key(row)``, in the order the keys first appeared."""
    latest: dict[Any, dict[str, Any]] = {}
    for row in rows:
        latest[key(row)] = row
    return list(latest.values())


def _repro_row(row: dict[str, Any]) -> str:
    knn, anchor = row.get("knn_top1"), row.get("lightly_knn")
    ratio = f"{knn / anchor:.3f}" if knn is not None and anchor else "—"
    status = row.get("status", "?") + (f": {row['error']}" if row.get("error") else "")
    epochs = f"{row.get('epochs_run', 0)} of {row.get('epochs', '?')}"
    return (
        f"| {row['method']} | {status} | {epochs} | {_num(knn, 4)} | {_num(anchor, 3)} | {ratio} | "
        f"{_num(row.get('linear_top1'), 4)} | {_num(row.get('epoch_s'), 2)} | {_num(row.get('wall_s'), 0)} | "
        f"{row.get('when', '—')} | {row.get('code', '—')} | {row.get('device', '—')} |\n"
    )


def _bench_row(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"| {row['when']} | {row['code']} | {row['method']} | FAILED: {row['error']} |||||||||\n"
    return (
        f"| {row['when']} | {row['code']} | {row['method']} | {row['device']} | {_num(row['step_ms'])} | "
        f"{_num(row['backbone_ms'])} | {_num(row['machinery_ms'])} | {_num(row['overhead'], 3)} | "
        f"{_num(row['overhead_from_parts'], 3)} | {_num(row['two_view_ms'])} | {_num(row.get('memory_peak_gb'), 2)} | "
        f"{_num(row.get('syncs_per_step'), 1)} |\n"
    )


def _compile_row(row: dict[str, Any], eager: dict[str, float]) -> str:
    if "error" in row:
        return f"| {row['when']} | {row['code']} | {row['mode']} | FAILED: {row['error']} ||||\n"
    return (
        f"| {row['when']} | {row['code']} | {row['mode']} | {_num(row['step_ms'])} | "
        f"{_num(eager.get(row['code']))} | {_num(row['overhead'], 3)} | {_num(row['wall_s'], 0)} |\n"
    )


def render(state: dict[str, Any]) -> str:
    """The whole markdown file for ``state`` (keys ``bench``, ``compile``, ``runs``)."""
    text = HEADER
    runs = state.get("runs", [])
    done = {r["method"]: r for r in runs if r.get("status") == "done"}
    shown = list(done.values()) + [r for r in _latest(runs, lambda r: r["method"]) if r["method"] not in done]
    text += REPRO + REPRO_TABLE + ("".join(_repro_row(r) for r in shown) or "| (no run yet) |||||||||||\n")
    if len(runs) > len(shown):
        text += "\nEvery attempt, in order:\n\n" + REPRO_TABLE + "".join(_repro_row(r) for r in runs)
    bench = _latest(state.get("bench", []), lambda r: (r["code"], r["method"]))
    text += BENCH + ("".join(_bench_row(r) for r in bench) or "| (no GPU session yet) |||||||||||\n")
    eager = {r["code"]: r["step_ms"] for r in bench if r["method"] == "simclr" and "step_ms" in r}
    rows = _latest(state.get("compile", []), lambda r: (r["code"], r["mode"]))
    text += COMPILE + ("".join(_compile_row(r, eager) for r in rows) or "| (no GPU session yet) ||||||\n")
    return text


def main(argv: list[str]) -> None:
    here = Path(__file__).resolve().parent
    state = Path(argv[0]) if argv else here / "gpu_state.json"
    out = Path(argv[1]) if len(argv) > 1 else here / "RESULTS_gpu.md"
    out.write_text(render(json.loads(state.read_text())))


if __name__ == "__main__":
    main(sys.argv[1:])
