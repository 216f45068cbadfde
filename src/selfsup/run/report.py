"""The end of a run: the encoder's weights, the plots, and summary.json."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.evaluate.plots import plot_curves, plot_embedding_map
from selfsup.run.files import atomic_write

ENCODER = "encoder.safetensors"
SUMMARY = "summary.json"


def save_encoder(encoder: nn.Module, path: str | Path) -> None:
    """The encoder's weights as safetensors (what users keep), written atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    atomic_write(path, lambda f: f.write(save(tensors)))


def load_encoder(encoder: nn.Module, path: str | Path) -> nn.Module:
    """``encoder`` with the weights of ``path``; one line (``ValueError``) if the file is damaged or does not fit."""
    from safetensors.torch import load_file

    try:
        weights = load_file(str(path))
    except Exception as error:  # safetensors' own error type for a truncated or malformed file
        raise ValueError(f"{path} is unreadable ({' '.join(str(error).split())}): it was not written completely or "
                         "was damaged; finish the run again with --resume, or retrain it") from None
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
    seconds), so that the final writes are short."""
    curves, embedding_map = io.BytesIO(), io.BytesIO()
    plot_curves(history, curves, title)
    plot_embedding_map(features.float().cpu().numpy(), labels.cpu().numpy(), embedding_map, title, classes=classes)
    return {"curves.png": curves.getvalue(), "embedding_map.png": embedding_map.getvalue()}


def write_outputs(out: Path, encoder: nn.Module, figures: dict[str, bytes], summary: dict[str, Any]) -> None:
    """The end of a run, each file written new and renamed into place: the encoder, the figures, and ``summary.json``
    last. A folder with ``summary.json`` holds a finished run; one without it (stopped mid-way), a run that
    ``--resume`` finishes."""
    save_encoder(encoder, out / ENCODER)
    for name, png in figures.items():
        atomic_write(out / name, lambda f, png=png: f.write(png))
    write_json(out / SUMMARY, summary)
