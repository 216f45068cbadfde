"""An encoder scored on tensors: held-out kNN and linear-probe top-1 of its frozen features, and the raw-input
baseline it must beat. Used by the training loop (per-epoch kNN) and by ``selfsup eval``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from selfsup.data.base import Datasets
from selfsup.evaluate.features import extract_features, normalize_batch
from selfsup.evaluate.knn import knn_top1
from selfsup.evaluate.linear import linear_probe_top1


def score_encoder(
    encoder: nn.Module,
    datasets: Datasets,
    cfg: dict[str, Any],
    device: torch.device,
    knn: bool = True,
    linear: bool = False,
    **feature_options: Any,
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Held-out kNN and/or linear-probe top-1 of any encoder on ``datasets`` (train split fits, test split scores).

    The features of each split are extracted once; also returns the test features and labels.
    ``feature_options`` go to ``extract_features`` (bf16, channels_last, dtype).
    """
    train_f = extract_features(encoder, datasets.train, device, **feature_options)
    test_f = extract_features(encoder, datasets.test, device, **feature_options)
    train_y, test_y = datasets.train.labels.to(device), datasets.test.labels.to(device)
    ev = cfg["eval"]
    scores: dict[str, float] = {}
    if knn:
        scores["knn_top1"] = knn_top1(train_f, train_y, test_f, test_y, k=ev["knn_k"], temperature=ev["knn_t"])
    if linear:
        scores["linear_top1"] = linear_probe_top1(train_f, train_y, test_f, test_y, iterations=ev["linear_epochs"])
    return scores, test_f, test_y


def pixel_knn(datasets: Datasets, k: int, temperature: float) -> float:
    """kNN of the raw inputs (normalised pixels or samples, flattened): the baseline an encoder must beat."""
    train, test = datasets.train, datasets.test
    return knn_top1(
        normalize_batch(train.data, train).flatten(1), train.labels,
        normalize_batch(test.data, test).flatten(1), test.labels, k, temperature,
    )
