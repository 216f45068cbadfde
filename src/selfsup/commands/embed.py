"""``selfsup embed``: a run encoder's features of every image (or sample) of a dataset, each row named by its file.

The output is one ``.npz`` (``np.savez``, no pickled objects) holding

- ``features``: float32 [N, D], the encoder's representation (inputs normalised with the statistics of the data
  the encoder trained on, as ``load_run`` gives them);
- ``paths``: str [N], each row's file relative to the folder or archive (``split/index`` for data without files:
  digits, CIFAR, sequences);
- ``labels``: int64 [N], the index in ``classes`` of the row's class folder, -1 where there is none;
- ``classes``: str [C], the class names (empty for unlabelled data).

Why .npz: numpy alone writes and reads it, strings included (``np.load(FILE)`` with its default
``allow_pickle=False``), so it needs no pyarrow or pandas, and it holds the features next to their names, which a
bare ``.npy`` cannot. In pandas: ``pd.DataFrame(f["features"], index=f["paths"])``. A name ending in ``.npy``
gets the features alone, as earlier versions wrote them, in the rows' order (the paths then go unsaid).

The features are computed batch by batch: a streamed folder (``data.stream``) is decoded a batch at a time and
never held whole, and only the [N, D] features are kept. ``out`` is written under a temporary name beside it and
renamed: it is ``out`` exactly, and a half-written file never has its name.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from selfsup.commands.evaluation import load_run
from selfsup.data import load_dataset
from selfsup.evaluate.features import extract_features
from selfsup.run.files import atomic_write
from selfsup.train.setup import resolve_device

SPLITS = ("all", "train", "test", "pretrain")


def embed(
    run: str | Path,
    data: str,
    out: str | Path,
    split: str = "all",
    data_dir: str | None = None,
    stream: bool | None = None,
) -> tuple[int, int]:
    """Write the run encoder's features of ``data``'s ``split`` to ``out``; returns their shape (rows, dimensions).

    data: a data SPEC (the run's own, or any of the same kind). split: ``all`` (every image of a folder; other data's train then
    test split), ``train``, ``test`` (a folder without train/ and test/ folders: the images selfsup holds out, as
    listed in the run's ``eval_split.json``) or ``pretrain``. stream: decode a folder batch by batch (None: as the
    run's ``data.stream`` says, ``auto`` by its size).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
    cfg, encoder, trained_on = load_run(run)
    device = resolve_device(cfg["train"]["device"])
    dataset = load_dataset(data, data_dir, split, **_data_options(cfg, trained_on, data, stream))
    if (dataset.kind, dataset.channels) != (trained_on.kind, trained_on.channels):
        raise ValueError(
            f"'{data}' holds {dataset.channels}-channel {dataset.kind}s but the run's encoder was trained on "
            f"{trained_on.channels}-channel {trained_on.kind}s ('{cfg['data']['spec']}'): embed data of that kind"
        )
    dataset.mean, dataset.std = trained_on.mean, trained_on.std  # the normalisation the encoder was trained with
    features = extract_features(encoder.to(device), dataset, device).cpu().numpy().astype(np.float32)
    if str(out).endswith(".npy"):
        print(f"selfsup: {out} holds the features alone (.npy); an .npz also holds each row's file and label",
              file=sys.stderr)
        atomic_write(out, lambda file: np.save(file, features))
    else:
        arrays = {
            "features": features,
            "paths": np.array(dataset.sample_names(split), dtype=str),
            "labels": dataset.labels.cpu().numpy().astype(np.int64),
            "classes": np.array(dataset.classes, dtype=str),
        }
        atomic_write(out, lambda file: np.savez(file, **arrays))
    return features.shape


def _data_options(cfg: dict[str, Any], trained_on: Any, data: str, stream: bool | None) -> dict[str, Any]:
    """How to load the data: as the run's config says (errors, streaming, workers, and for its own data the image
    side, so that the decoded cache is shared), other images at the encoder's side."""
    options = cfg["data"]
    configured = options.get("stream", "auto")
    workers = options.get("workers", "auto")
    side = trained_on.input_size if trained_on.kind == "image" else None
    return {
        "image_size": options.get("image_size") if data == options["spec"] else side,
        "on_error": options.get("on_error", "stop"),
        "stream": stream if stream is not None else (None if configured == "auto" else configured),
        "workers": None if workers == "auto" else workers,
        "progress": sys.stderr.isatty(),
    }
