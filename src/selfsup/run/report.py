"""The end of a run: the encoder's weights, summary.json, and the plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.evaluate.plots import plot_curves, plot_embedding_map
from selfsup.run.checkpoint import atomic_write


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


def write_outputs(
    out: Path,
    encoder: nn.Module,
    summary: dict[str, Any],
    history: list[dict[str, Any]],
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    plots: bool = True,
) -> None:
    save_encoder(encoder, out / "encoder.safetensors")
    write_json(out / "summary.json", summary)
    if not plots:
        return
    title = f"{summary['method']} on {summary['data']}"
    plot_curves(history, out / "curves.png", title)
    plot_embedding_map(
        test_features.float().cpu().numpy(), test_labels.cpu().numpy(), out / "embedding_map.png", title
    )
