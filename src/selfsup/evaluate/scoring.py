"""An encoder scored on tensors: held-out kNN and linear-probe top-1 of its frozen features, and the raw-input
baseline it must beat. Used by the training loop (per-epoch kNN) and by ``selfsup eval``.

Data without labels (a folder with fewer than two class folders) has no kNN or linear score that means anything
(one class: every guess is right). Its encoder is scored by the collapse monitors of its features instead
(``monitors.feature_monitors``), and ``no_labels`` says why, in one line. Samples labelled -1 among labelled ones
(images outside the class folders) are left out of kNN and the probe."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from selfsup.data.base import Datasets
from selfsup.evaluate.features import extract_features, normalize_batch
from selfsup.evaluate.knn import knn_top1
from selfsup.evaluate.linear import linear_probe_top1
from selfsup.evaluate.monitors import feature_monitors


def score_encoder(
    encoder: nn.Module,
    datasets: Datasets,
    cfg: dict[str, Any],
    device: torch.device,
    knn: bool = True,
    linear: bool = False,
    **feature_options: Any,
) -> tuple[dict[str, float], torch.Tensor, torch.Tensor]:
    """Held-out kNN and/or linear-probe top-1 of any encoder on ``datasets`` (train split fits, test split scores);
    on data without labels, the collapse monitors of the features of both splits instead.

    The features of each split are extracted once; also returns the test features and labels.
    ``feature_options`` go to ``extract_features`` (bf16, channels_last, dtype).
    """
    train_f = extract_features(encoder, datasets.train, device, **feature_options)
    test_f = extract_features(encoder, datasets.test, device, **feature_options)
    train_y, test_y = datasets.train.labels.to(device), datasets.test.labels.to(device)
    if not labelled(datasets):
        return feature_monitors(torch.cat([train_f, test_f])), test_f, test_y
    known_train, known_test = train_y >= 0, test_y >= 0
    fit = (train_f[known_train], train_y[known_train], test_f[known_test], test_y[known_test])
    ev = cfg["eval"]
    scores: dict[str, float] = {}
    if knn:
        scores["knn_top1"] = knn_top1(*fit, k=ev["knn_k"], temperature=ev["knn_t"])
    if linear:
        scores["linear_top1"] = linear_probe_top1(*fit, iterations=ev["linear_epochs"])
    return scores, test_f, test_y


def labelled(datasets: Datasets) -> bool:
    """Whether kNN and the linear probe mean something: two classes or more, and labelled samples in both splits."""
    train, test = datasets.train, datasets.test
    return train.num_classes >= 2 and bool((train.labels >= 0).any()) and bool((test.labels >= 0).any())


def no_labels(datasets: Datasets) -> str | None:
    """One line saying why ``datasets`` get collapse monitors instead of kNN and the linear probe; None if labelled."""
    if labelled(datasets):
        return None
    test = datasets.test
    if not test.unlabelled:
        return f"'{test.name}' has fewer than two labelled classes: reporting the collapse monitors only, not kNN"
    return (f"{test.source} {test.unlabelled}: kNN and the linear probe need labels; reporting the collapse monitors "
            "only (put images in one folder per class to get them)")


def pixel_knn(datasets: Datasets, k: int, temperature: float) -> float:
    """kNN of the raw inputs (normalised pixels or samples, flattened): the baseline an encoder must beat."""
    train, test = datasets.train, datasets.test
    return knn_top1(
        normalize_batch(train.data, train).flatten(1), train.labels,
        normalize_batch(test.data, test).flatten(1), test.labels, k, temperature,
    )
