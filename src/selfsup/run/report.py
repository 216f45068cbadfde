"""What a run reports: at its start, how its data was split (``eval_split.json``) and why it gets no kNN; at its
end, the encoder's weights, the plots, and summary.json."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.data.base import Datasets
from selfsup.data.images import HOLDOUT
from selfsup.evaluate.plots import plot_curves, plot_embedding_map
from selfsup.evaluate.scoring import no_labels
from selfsup.run.custom_encoder import PROGRAM
from selfsup.run.files import atomic_write, owns, read_manifest

ENCODER = "encoder.safetensors"
SUMMARY = "summary.json"
EVAL_SPLIT = "eval_split.json"


def save_encoder(encoder: nn.Module, path: str | Path) -> None:
    """The encoder's weights as safetensors (what users keep), written atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    atomic_write(path, lambda f: f.write(save(tensors)))


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path``; one line (``ValueError``) if it is damaged."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as error:  # safetensors' own error type for a truncated or malformed file
        raise ValueError(f"{path} is unreadable ({' '.join(str(error).split())}): it was not written completely or "
                         "was damaged; finish the run again with --resume, or retrain it") from None


def load_encoder(encoder: nn.Module, path: str | Path) -> nn.Module:
    """``encoder`` with the weights of ``path``; one line (``ValueError``) if the file is damaged or does not fit."""
    weights = read_weights(path)
    try:
        encoder.load_state_dict(weights)
    except RuntimeError:
        raise ValueError(f"{path} does not hold the weights of the backbone config.yaml describes: "
                         "the run folder's files are from different runs") from None
    return encoder


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(payload, indent=2) + "\n").encode()))


def render_figures(
    history: list[dict[str, Any]], features: torch.Tensor, labels: torch.Tensor, title: str,
    classes: list[str] | None = None,
) -> dict[str, bytes]:
    """``curves.png`` and ``embedding_map.png`` as PNG bytes, drawn before anything is written (the t-SNE takes
    seconds), so that the final writes are short (a handful of points gets a PCA map: ``plots.plot_embedding_map``)."""
    curves, embedding_map = io.BytesIO(), io.BytesIO()
    plot_curves(history, curves, title)
    plot_embedding_map(features.float().cpu().numpy(), labels.cpu().numpy(), embedding_map, title, classes=classes)
    return {"curves.png": curves.getvalue(), "embedding_map.png": embedding_map.getvalue()}


def write_outputs(
    out: Path, encoder: nn.Module, figures: dict[str, bytes], summary: dict[str, Any], program: bytes | None = None
) -> None:
    """The end of a run, each file written new and renamed into place: the encoder (and a custom encoder's TorchScript
    ``program``, ``custom_encoder.PROGRAM``), the figures, and ``summary.json`` last. A folder with ``summary.json``
    holds a finished run; one without it (stopped mid-way), a run that ``--resume`` finishes. Without a ``program``,
    one an earlier run of the folder wrote (of older weights) is deleted first."""
    if program is None and owns(read_manifest(out) or set(), PROGRAM):
        (out / PROGRAM).unlink(missing_ok=True)
    save_encoder(encoder, out / ENCODER)
    if program is not None:
        atomic_write(out / PROGRAM, lambda f: f.write(program))
    for name, png in figures.items():
        atomic_write(out / name, lambda f, png=png: f.write(png))
    write_json(out / SUMMARY, summary)


def describe_data(out: Path, datasets: Datasets) -> None:
    """At a run's start, one stderr line for data that is not split or labelled as kNN expects: a source without
    train/ and test/ folders (its held-out split, made by selfsup, goes to ``eval_split.json``: the rule and the test
    files), or one without class folders (no kNN, collapse monitors instead)."""
    train, test = datasets.train, datasets.test
    if test.split_rule:
        split = {"source": test.source, "rule": test.split_rule,
                 "images": {"pretrain": len(datasets.pretrain), "train": len(train), "test": len(test)},
                 "test_files": list(test.paths or [])}
        write_json(out / EVAL_SPLIT, split)
    why = no_labels(datasets)
    if why:
        print(f"selfsup: {why}", file=sys.stderr)
    elif test.split_rule:
        print(f"selfsup: {test.source} has no train/ and test/ folders: pre-training uses all {len(datasets.pretrain)} "
              f"images; kNN and the linear probe hold out 1 in {HOLDOUT} images per "
              f"class (the list: {out / EVAL_SPLIT})", file=sys.stderr)
