"""Scoring encoders (kNN, linear probe) during and after training: ``selfsup eval`` and ``selfsup embed``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from selfsup.data import ArrayDataset, load_dataset
from selfsup.evaluate.knn import knn_top1
from selfsup.evaluate.linear import linear_probe_top1
from selfsup.nn.backbones import build_backbone
from selfsup.train.features import extract_features, normalize_batch
from selfsup.train.report import load_encoder, write_json
from selfsup.train.run_folder import read_config
from selfsup.train.schema import check_config
from selfsup.train.setup import load_datasets, resolve_device, seed_everything


def load_run(run: str | Path) -> tuple[dict[str, Any], nn.Module, ArrayDataset]:
    """The run's config, its trained encoder (from ``encoder.safetensors``) and its data's test split."""
    run = Path(run)
    weights = run / "encoder.safetensors"
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"{run} is not a run folder (no config.yaml): pass the --out of a `selfsup train`")
    cfg = read_config(run)
    check_config(cfg)
    if not weights.is_file():
        raise FileNotFoundError(f"{run} has no encoder.safetensors yet: the run has not finished (resume it with --resume)")
    probe = load_dataset(cfg["data"]["spec"], cfg["data"]["dir"], "test")
    encoder = build_backbone(cfg["backbone"], probe.channels, probe.input_size)
    return cfg, load_encoder(encoder, weights), probe


def evaluate_run(run: str | Path, protocol: str = "all") -> dict[str, float]:
    """kNN and/or linear-probe top-1 of the run's encoder on its data; merged into ``summary.json``."""
    cfg, encoder, _ = load_run(run)
    device = resolve_device(cfg["train"]["device"])
    encoder.to(device)
    datasets = load_datasets(cfg["data"]["spec"], cfg["data"]["dir"], cfg["data"])
    results, _, _ = score_encoder(
        encoder, datasets, cfg, device, knn=protocol in ("knn", "all"), linear=protocol in ("linear", "all")
    )
    summary_path = Path(run) / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    write_json(summary_path, {**summary, **results})
    return results


def embed(run: str | Path, data: str, out: str | Path, split: str = "test", data_dir: str | None = None) -> tuple:
    """Write the run encoder's features of ``data``'s ``split`` to ``out`` (.npy, [N, D] float32)."""
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
    np.save(out, features)
    return features.shape


def score_encoder(
    encoder: nn.Module,
    datasets,
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


def pixel_knn(datasets, k: int, temperature: float) -> float:
    """kNN of the raw inputs (normalised pixels or samples, flattened): the baseline an encoder must beat."""
    train, test = datasets.train, datasets.test
    return knn_top1(
        normalize_batch(train.data, train).flatten(1), train.labels,
        normalize_batch(test.data, test).flatten(1), test.labels, k, temperature,
    )


def random_init_knn(cfg: dict[str, Any], datasets, device: torch.device) -> float:
    """kNN of the encoder a run with ``cfg`` starts from (same seed, same construction order)."""
    seed_everything(cfg["train"]["seed"])
    encoder = build_backbone(cfg["backbone"], datasets.train.channels, datasets.train.input_size).to(device)
    return score_encoder(encoder, datasets, cfg, device)[0]["knn_top1"]
