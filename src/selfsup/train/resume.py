"""Resuming a run: its saved config, with only the changes a continuation of the same run may make."""

from __future__ import annotations

import copy
from typing import Any

from selfsup.train.config import parse_value
from selfsup.train.schema import check_assignments, check_config, check_overrides, leaves

# What --resume may change: how long and where the run trains, how it checkpoints, reports and guards.
# Anything else (model, data, objective, optimizer, batch) would make the rest a different run.
RESUMABLE = {
    "train.epochs", "train.device", "train.progress", "train.compile", "train.checkpoint_every",
    "train.checkpoint_every_steps", "train.on_nan", "data.dir", "data.workers", "eval.every", "eval.linear_every",
    "eval.plots",
}


def resumed_config(
    saved: dict[str, Any], overrides: dict[str, Any] | None = None, assignments: list[str] | None = None
) -> dict[str, Any]:
    """``saved`` (a run's config.yaml, checked) with ``overrides`` and ``--set`` changes that ``RESUMABLE`` allows.

    A value equal to the saved one is no change (``--batch-size 256`` on a run with 256 is fine).
    """
    check_config(saved)
    method = saved["method"]
    check_assignments(method, assignments)
    check_overrides(method, overrides)
    changes = list(leaves(overrides or {}))
    for assignment in assignments or []:
        key, text = assignment.split("=", 1)
        changes += list(leaves({key.strip(): parse_value(text)}))
    cfg = copy.deepcopy(saved)
    for dotted, value in changes:
        *sections, key = dotted.split(".")
        node = cfg
        for section in sections:
            node = node.setdefault(section, {})
        if node.get(key) == value:
            continue
        if dotted not in RESUMABLE:
            raise ValueError(
                f"--resume continues the run as configured: {dotted} cannot change ({node.get(key)!r} -> {value!r}); "
                f"start a new run (another --out) to change it"
            )
        node[key] = value
    return cfg
