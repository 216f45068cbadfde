"""``selfsup embed``: a run encoder's features of a dataset, written to .npy."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from selfsup.commands.evaluation import load_run
from selfsup.data import load_dataset
from selfsup.evaluate.features import extract_features
from selfsup.train.setup import resolve_device


def embed(run: str | Path, data: str, out: str | Path, split: str = "test", data_dir: str | None = None) -> tuple:
    """Write the run encoder's features of ``data``'s ``split`` to ``out`` (.npy format, [N, D] float32).

    The file is ``out`` exactly, whatever its suffix (``np.save`` on a name would append .npy to ``X.json``).
    """
    cfg, encoder, trained_on = load_run(run)
    device = resolve_device(cfg["train"]["device"])
    dataset = load_dataset(data, data_dir, split, progress=sys.stderr.isatty())
    if (dataset.kind, dataset.channels) != (trained_on.kind, trained_on.channels):
        raise ValueError(
            f"'{data}' holds {dataset.channels}-channel {dataset.kind}s but the run's encoder was trained on "
            f"{trained_on.channels}-channel {trained_on.kind}s ('{cfg['data']['spec']}'): embed data of that kind"
        )
    features = extract_features(encoder.to(device), dataset, device).cpu().numpy().astype(np.float32)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as file:
        np.save(file, features)
    return features.shape
