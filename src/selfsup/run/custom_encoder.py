"""A run trained with a user's own encoder (``selfsup.fit(..., encoder=MODULE)``): what ``config.yaml`` records of
it, and the TorchScript program of the trained encoder that ``selfsup eval``, ``embed`` and ``export`` load in its
place, since selfsup cannot rebuild a class it knows only by name.

- ``config.yaml``: ``backbone: {name: custom, class: MODULE.CLASS}``; what the recipe fitted to the backbone the
  module replaced (the small-image convnet) leaves the ``recipe`` section, as it never applied.
- ``encoder.jit.pt`` (``PROGRAM``), beside ``encoder.safetensors``: ``torch.jit.script`` of the trained encoder,
  else ``torch.jit.trace`` on two samples of the training data; either is kept only once the program, saved and
  loaded back, gives the module's features of other samples (another batch size) to ``TOLERANCE``, so that a
  trace which froze a data-dependent branch or a Python value is not kept. It is made from a copy on the CPU in
  float32 and eval mode. When neither works, the run holds the weights alone, and the commands say in one line
  how to load them into the user's module from Python (``refusal``, ``load_weights``).

Loading a program runs no Python that a file could carry: ``torch.jit.load`` reads a restricted format. Its code is
TorchScript, interpreted by TorchScript's own runtime with torch operators only (no Python modules, builtins or
imports), and its stored values are read by TorchScript's own unpickler, which builds tensors and TorchScript
objects and imports nothing, unlike ``pickle`` or ``torch.load`` of a module. Nothing here pickles a module.
"""

from __future__ import annotations

import copy
import io
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.data.base import ArrayDataset, iterate_batches
from selfsup.evaluate.features import normalize_batch
from selfsup.nn.backbones import CUSTOM

PROGRAM = "encoder.jit.pt"
TOLERANCE = 1e-4
TRACE_SAMPLES, CHECK_SAMPLES = 2, 16
HOW = {  # what a user does instead, by what the command was asked to do
    "load": "load it in Python with selfsup.load_encoder({run!r}, encoder={name}(...))",
    "resume": "resume it from Python with selfsup.fit(out_dir={run!r}, resume=True, encoder={name}(...))",
    "rerun": "rerun it from Python with selfsup.fit(config={run!r}, encoder={name}(...))",
}


def is_custom(cfg: dict[str, Any]) -> bool:
    """Whether the run with config ``cfg`` trained a user's own module."""
    return isinstance(cfg.get("backbone"), dict) and cfg["backbone"].get("name") == CUSTOM


def class_path(encoder: nn.Module) -> str:
    """``MODULE.CLASS`` of ``encoder``, as config.yaml records it."""
    kind = type(encoder)
    return f"{kind.__module__}.{kind.__qualname__}"


def record(cfg: dict[str, Any], encoder: nn.Module) -> None:
    """Make ``cfg``'s ``backbone`` section name ``encoder``'s class, without the recipe's changes to the backbone
    it replaces."""
    cfg["backbone"] = {"name": CUSTOM, "class": class_path(encoder)}
    changes = (cfg.get("recipe") or {}).get("changes") or {}
    for key in [key for key in changes if key.startswith("backbone.")]:
        del changes[key]


def refusal(run: str | Path, cfg: dict[str, Any], action: str = "load") -> str:
    """The one line saying that ``run`` cannot be rebuilt from its files alone, and what to do (``HOW[action]``)."""
    recorded = str(cfg["backbone"].get("class", "class not recorded"))
    name = recorded.rpartition(".")[2] or "Module"
    return (f"{run} was trained with a custom encoder ({recorded}) that selfsup cannot rebuild: "
            + HOW[action].format(run=str(run), name=name))


def compile_program(encoder: nn.Module, data: ArrayDataset) -> bytes | None:
    """The TorchScript program of ``encoder`` (scripted, else traced on ``data``), checked against the module; None,
    with a note on stderr, if neither gives the module's features."""
    try:
        model = copy.deepcopy(encoder).cpu().float().eval()
        samples = min(len(data), TRACE_SAMPLES + CHECK_SAMPLES)
        inputs = normalize_batch(next(iterate_batches(data.data, [torch.arange(samples)], torch.device("cpu"))), data)
    except Exception as error:  # a module that cannot be copied: the run still writes its weights
        _unsaved(encoder, [f"copying it: {_said(error)}"])
        return None
    example, check = inputs[:TRACE_SAMPLES], inputs[TRACE_SAMPLES:] if samples > TRACE_SAMPLES else inputs
    reasons = []
    for how in ("script", "trace"):
        try:
            program = _save(model, how, example)
            reason = _difference(model, program, check)
        except Exception as error:  # a user's module may fail scripting or tracing in any way: each is a reason
            reason = _said(error)
        if not reason:
            return program
        reasons.append(f"torch.jit.{how}: {reason}")
    _unsaved(encoder, reasons)
    return None


def _unsaved(encoder: nn.Module, reasons: list[str]) -> None:
    print(f"selfsup: note: the custom encoder ({class_path(encoder)}) could not be saved as a TorchScript program "
          f"({'; '.join(reasons)}): the run keeps its weights alone, which `selfsup eval`, `embed` and `export` cannot "
          "use; load them in Python with selfsup.load_encoder(RUN, encoder=MODULE)", file=sys.stderr)


def _said(error: Exception) -> str:
    return f"{error.__class__.__name__}: {' '.join(str(error).split())[:160]}"


def _save(model: nn.Module, how: str, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation and the tracer's warnings: the check below decides
        program = torch.jit.script(model) if how == "script" else torch.jit.trace(model, example)
        torch.jit.save(program, buffer)
    return buffer.getvalue()


@torch.no_grad()
def _difference(model: nn.Module, program: bytes, check: torch.Tensor) -> str:
    """'' if the saved ``program`` gives ``model``'s features of ``check``; else how it differs, in words."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(io.BytesIO(program), map_location="cpu").eval()
    expected, got = model(check), loaded(check)
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return f"it returns {tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__} for " \
               f"{tuple(expected.shape)} on other samples"
    difference = float((got - expected).abs().max())
    return "" if difference <= TOLERANCE else f"its features of other samples differ by up to {difference:.3g}"


def load_program(run: Path, cfg: dict[str, Any]) -> nn.Module:
    """The run's TorchScript program (``torch.jit.load``: no Python code runs, see above), or one line saying how to
    load the weights instead."""
    path = run / PROGRAM
    if not path.is_file():
        raise ValueError(refusal(run, cfg))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still TorchScript's way in
            return torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"{path} is unreadable ({' '.join(str(error).split())[:160]}): it was not written completely "
                         f"or was damaged; {HOW['load'].format(run=str(run), name='MODULE')}") from None


def load_weights(encoder: nn.Module, weights: dict[str, torch.Tensor], path: Path) -> nn.Module:
    """``encoder`` with ``weights`` (read from ``path``), all of them and nothing else; one line naming the missing,
    unexpected and reshaped keys if they do not fit."""
    expected = encoder.state_dict()
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    reshaped = [f"{key} {list(weights[key].shape)} there, {list(value.shape)} here" for key, value in expected.items()
                if key in weights and weights[key].shape != value.shape]
    problems = [f"{what} {_listed(keys)}" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("reshaped", reshaped)) if keys]
    if problems:
        raise ValueError(f"{path} does not fit the given encoder {class_path(encoder)} ({'; '.join(problems)}): pass "
                         "the module the run trained, built with the same arguments")
    encoder.load_state_dict(weights)
    return encoder


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
