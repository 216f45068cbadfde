"""What a person sees on stderr while a command runs: one progress bar over the whole run with its ETA, a line per
epoch that stays, a start and an end line for each slow phase, and at the end an aligned table of the results.

tqdm rather than rich: tqdm is already a dependency (rich would add one), writes nothing but plain lines when
asked, and ``tqdm.write`` keeps the epoch lines above the bar. On a terminal the bar redraws itself; when stderr
is a file or a pipe (a log, CI, a job scheduler) there is no bar and no carriage return, only whole lines.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from selfsup import distributed

_command_start: float | None = None  # set by the command line when it starts, so wall time counts the imports too


def mark_command_start(started: float | None = None) -> None:
    """Count this command's wall time from ``started`` (a ``time.perf_counter()``; default now)."""
    global _command_start
    _command_start = time.perf_counter() if started is None else started


def _percent(value: Any) -> str | None:
    return f"{100 * value:.1f} %" if isinstance(value, (int, float)) else None


class Console:
    """Progress and phase times of one command; silent on ranks other than 0, and when ``enabled`` is False."""

    def __init__(self, enabled: bool = True, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.enabled = enabled and distributed.is_main()
        self.interactive = self.enabled and self.stream.isatty()
        self.started = _command_start if _command_start is not None else time.perf_counter()
        self.phases: dict[str, float] = {}
        self.bar: tqdm | None = None

    def say(self, line: str) -> None:
        """One line that stays (above the bar, if one is drawn)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)

    @contextmanager
    def phase(self, name: str, doing: str | None = None) -> Iterator[None]:
        """Time a phase into ``phases[name]``; with ``doing``, a start line and an end line with its duration."""
        if doing:
            self.say(f"selfsup: {doing} ...")
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            self.phases[name] = self.phases.get(name, 0.0) + seconds
        if doing:
            self.say(f"selfsup: {doing}: done in {seconds:.1f} s")

    def start_bar(self, total_steps: int, done_steps: int) -> None:
        """One bar over every step of the run (its ETA is the run's), on a terminal only."""
        if self.interactive:
            self.bar = tqdm(total=total_steps, initial=done_steps, unit="step", desc="training", file=self.stream,
                            dynamic_ncols=True, mininterval=0.5, leave=False)

    def advance(self, steps: int = 1, **postfix: str) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(steps)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def epoch(self, row: dict[str, Any], epochs: int) -> None:
        """The line an epoch leaves: loss, kNN and online probe where measured, throughput and time."""
        parts = [f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}", f"loss {row['loss']:.4f}"]
        for key, name in (("knn_top1", "kNN"), ("linear_top1", "linear"), ("probe_top1", "probe")):
            if (value := _percent(row.get(key))) is not None:
                parts.append(f"{name} {value}")
        parts += [f"{row['images_per_s']:.0f} img/s", f"{row['epoch_s']:.1f} s"]
        self.say("  ".join(parts))

    def wall_s(self) -> float:
        """Seconds since the command started."""
        return time.perf_counter() - self.started


SCORES = (("knn_top1", "kNN top-1"), ("linear_top1", "linear probe top-1"), ("probe_top1", "online probe"))
MONITORS = (("feature_std", "feature std"), ("feature_std_ratio", "feature std x sqrt(d)"),
            ("feature_effective_rank", "feature effective rank"), ("feature_dim", "feature dimension"))


def _score_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [(name, value) for key, name in SCORES if (value := _percent(result.get(key))) is not None]
    for labels, top1 in (result.get("finetune_top1") or {}).items():
        rows.append((f"fine-tuned on {labels}", _percent(top1) or "-"))
    rows += [(name, f"{result[key]:.3g}") for key, name in MONITORS if isinstance(result.get(key), (int, float))]
    return rows


def _aligned(rows: list[tuple[str, str]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)


def scores_table(result: dict[str, Any], run: str | Path) -> str:
    """``selfsup eval``'s scores for a person."""
    return _aligned([("run folder", str(run)), ("evaluated on", str(result.get("data")))] + _score_rows(result))


def summary_table(summary: dict[str, Any], run: str | Path | None = None) -> str:
    """The end of a run for a person: scores, throughput, wall time by phase, and where the run folder is."""
    rows = [("method", f"{summary.get('method')} on {summary.get('data')}, {summary.get('epochs')} epochs")]
    rows += _score_rows(summary)
    if isinstance(summary.get("images_per_s"), (int, float)):
        rows.append(("images/s", f"{summary['images_per_s']:.0f} (training)"))
    if isinstance(summary.get("wall_s"), (int, float)):
        phases = summary.get("phases_s") or {}
        detail = ", ".join(f"{name} {seconds:.1f}" for name, seconds in phases.items())
        rows.append(("wall time", f"{summary['wall_s']:.1f} s" + (f" ({detail})" if detail else "")))
    if run is not None:
        rows.append(("run folder", str(run)))
    return _aligned(rows)
