"""``selfsup compare RUN [RUN ...]``: finished runs side by side, as one markdown table and one figure."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfsup.config.schema import check_config
from selfsup.evaluate.plots import plot_runs
from selfsup.run.run_folder import METRICS, read_config

COLUMNS = ("run", "method", "data", "backbone", "epochs", "kNN", "linear", "fine-tune", "wall time", "images/s")


def load_finished(run: Path) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """(config, summary, metrics rows) of a finished run; one line if ``run`` is not one."""
    cfg = read_config(run)
    check_config(cfg)
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise ValueError(f"{run} has no summary.json: the run has not finished (resume it with --resume)")
    try:
        summary = json.loads(summary_path.read_text())
        rows = [json.loads(line) for line in (run / METRICS).read_text().splitlines() if line.strip()]
    except (json.JSONDecodeError, OSError) as error:
        raise ValueError(f"{run}: cannot read its summary or metrics ({error})") from None
    if not isinstance(summary, dict):
        raise ValueError(f"{summary_path} holds a {type(summary).__name__}, not a run's summary: rerun or resume the run")
    if not all(isinstance(r, dict) and isinstance(r.get("epoch"), int) and isinstance(r.get("loss"), (int, float))
               for r in rows):
        raise ValueError(f"{run / METRICS} has a line that is not an epoch's record: restore it or rerun the run")
    return cfg, summary, rows


def _percent(value: Any) -> str:
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) else "-"


def _finetune(summary: dict[str, Any]) -> str:
    scores = summary.get("finetune_top1")
    if not isinstance(scores, dict):
        return "-"
    return ", ".join(f"{_percent(top1)} ({labels})" for labels, top1 in scores.items()) or "-"


def row(run: Path, cfg: dict[str, Any], summary: dict[str, Any]) -> dict[str, str]:
    wall = summary.get("wall_s")
    return {
        "run": str(run),
        "method": str(cfg.get("method")),
        "data": str(cfg.get("data", {}).get("spec")),
        "backbone": str(cfg.get("backbone", {}).get("name")),
        "epochs": str(summary.get("epochs", "-")),
        "kNN": _percent(summary.get("knn_top1")),
        "linear": _percent(summary.get("linear_top1")),
        "fine-tune": _finetune(summary),
        "wall time": f"{wall:.0f} s" if isinstance(wall, (int, float)) else "-",
        "images/s": f"{summary['images_per_s']:.0f}" if isinstance(summary.get("images_per_s"), (int, float)) else "-",
    }


def markdown_table(rows: list[dict[str, str]]) -> str:
    """One markdown table; the fine-tune column only when some run has fine-tuning results."""
    columns = [c for c in COLUMNS if c != "fine-tune" or any(r[c] != "-" for r in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(r[c] for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def figure_path(plot: str | Path) -> Path:
    """Where ``--plot`` puts the figure: ``DIR/compare.png`` for an existing folder, ``.png`` added to a name
    without a suffix (as matplotlib does), else the name itself; what ``selfsup compare`` prints."""
    plot = Path(plot)
    if plot.is_dir():
        return plot / "compare.png"
    return plot if plot.suffix else plot.with_name(plot.name + ".png")


def legend_labels(runs: list[tuple[Path, dict[str, Any]]], histories: list[list[dict[str, Any]]]) -> dict[str, list]:
    """Each run's metrics under 'METHOD on DATA' (its folder added where two runs would share that label)."""
    names = [f"{cfg.get('method')} on {cfg.get('data', {}).get('spec')}" for _, cfg in runs]
    return {
        name if names.count(name) == 1 else f"{name} ({run})": history
        for name, (run, _), history in zip(names, runs, histories)
    }


def compare(runs: list[str | Path], plot: str | Path = "compare.png") -> str:
    """The markdown table of ``runs`` (kNN, linear, fine-tune in %); writes their kNN and loss curves to
    ``figure_path(plot)``."""
    if not runs:
        raise ValueError("compare needs at least one run folder")
    loaded = [(Path(run), *load_finished(Path(run))) for run in runs]
    plot_runs(legend_labels([(run, cfg) for run, cfg, _, _ in loaded], [rows for *_, rows in loaded]), figure_path(plot))
    return markdown_table([row(run, cfg, summary) for run, cfg, summary, _ in loaded])
