"""Resuming a run: its saved config, with only the changes a continuation of the same run may make."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import torch

from selfsup import distributed
from selfsup.config.build import parse_value
from selfsup.config.schema import check_assignments, check_config, check_overrides, leaves

# What --resume may change: how long and where the run trains, how it checkpoints, reports and guards.
# Anything else (model, data, objective, optimizer, batch) would make the rest a different run.
RESUMABLE = {
    "train.epochs", "train.device", "train.progress", "train.compile", "train.compile_mode", "train.compile_backend",
    "train.checkpoint_every",
    "train.checkpoint_every_steps", "train.on_nan", "data.dir", "data.workers", "eval.every", "eval.linear_every",
    "eval.plots", "train.tensorboard",
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


def replan(cfg: dict[str, Any], planned: int, epoch: int, step: int, mid_epoch: bool) -> None:
    """A resume with another ``train.epochs`` than the checkpoint planned: checked, said on stderr, and recorded
    in ``cfg['recipe']['resumed']`` (config.yaml) with how the schedules continue."""
    epochs = cfg["train"]["epochs"]
    started = epoch + mid_epoch
    if epochs < started:
        raise ValueError(f"--epochs {epochs}: the run has already trained {started} epoch(s); ask for at least that")
    how = (f"lr warm-up and cosine decay (and every schedule by step, e.g. EMA momentum) re-planned over {epochs} "
           f"epochs from step {step} on; the steps before kept the values of the {planned}-epoch plan")
    cfg.setdefault("recipe", {}).setdefault("resumed", []).append(
        {"at_epoch": epoch, "at_step": step, "epochs": [planned, epochs], "schedule": how}
    )
    if distributed.is_main():
        change = "extending" if epochs > planned else "shortening"
        print(f"selfsup: {change} the run from {planned} to {epochs} epochs: {how}", file=sys.stderr)


# What a checkpoint of ``train.Trainer`` holds, with the type of each value.
CHECKPOINT_KEYS: dict[str, type | tuple[type, ...]] = {
    "epoch": int, "step": int, "method": dict, "runtime": dict, "optimizer": dict, "history": list, "epochs": int,
    "partial": (dict, type(None)),
}


def check_checkpoint(state: Any, expected: dict[str, torch.Tensor], path: Path) -> None:
    """One line unless ``state`` is a selfsup checkpoint whose weights fit a model with the ``expected``
    state dict: a checkpoint of another width or method would fail inside ``load_state_dict`` in many lines."""
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__}, not a selfsup checkpoint; "
                         "put the run's own last.pt back, or start again with --overwrite")
    for key, kind in CHECKPOINT_KEYS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            what = "lacks" if key not in state else "has a malformed"
            raise ValueError(f"checkpoint {path} {what} '{key}': not a checkpoint selfsup wrote; put the run's own "
                             "last.pt back, or start again with --overwrite")
    if state["partial"] is not None and not isinstance(state["partial"].get("ranks"), list):
        raise ValueError(f"checkpoint {path} has a malformed 'partial': not a checkpoint selfsup wrote; put the run's "
                         "own last.pt back, or start again with --overwrite")
    difference = weights_difference(expected, state["method"])
    if difference:
        raise ValueError(f"checkpoint {path} is from another model ({difference}) than this run's config.yaml "
                         "describes: resume with the run's own checkpoint, or start a new run")


def weights_difference(expected: dict[str, torch.Tensor], saved: dict[str, Any]) -> str:
    """The first way ``saved`` weights differ from ``expected`` in names or shapes, in words; '' if they fit."""
    missing = [name for name in expected if name not in saved]
    extra = [name for name in saved if name not in expected]
    if missing:
        return f"it lacks {_first_of(missing)}"
    if extra:
        return f"it holds {_first_of(extra)}, which this model has not"
    for name, tensor in expected.items():
        value = saved[name]
        if not isinstance(value, torch.Tensor):
            return f"its {name} is a {type(value).__name__}, not a tensor"
        if value.shape != tensor.shape:
            return f"{name} is {list(value.shape)} there and {list(tensor.shape)} here"
    return ""


def _first_of(names: list[str]) -> str:
    return names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "")
