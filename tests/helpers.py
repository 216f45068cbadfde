"""Shared test helpers: does a method learn on digits, with healthy collapse monitors?"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import torch

from selfsup.commands.evaluation import random_init_knn
from selfsup.train.setup import Datasets, load_datasets, make_config
from selfsup.train.trainer import fit

# Small enough for CI on 2 cores: a ResNet-18 with 8 base channels, 8x8 digits.
DIGITS_SMALL = [
    "backbone.width=8",
    "train.batch_size=128",
    "train.epochs=6",
    "train.device=cpu",
    "train.progress=false",
    "optim.warmup_epochs=1",
    "eval.every=0",
    "eval.knn_k=20",
    "eval.linear_epochs=30",
    "eval.plots=false",
]


@lru_cache(maxsize=1)
def digits() -> Datasets:
    return load_datasets("digits", None)


@dataclass
class LearningResult:
    knn_trained: float
    knn_random_init: float
    last_epoch: dict  # the last metrics.jsonl record: loss, z_std_ratio, effective_rank, alignment, uniformity, ...
    summary: dict


def learns_on_digits(method: str, tmp_path, assignments: list[str] | None = None) -> LearningResult:
    """Train ``method`` briefly on digits and measure held-out kNN of the trained and the random-init encoder.

    Usage in a test::

        result = learns_on_digits("byol", tmp_path, ["train.epochs=8"])
        assert result.knn_trained > result.knn_random_init + 0.02
        assert result.last_epoch["z_std_ratio"] > 0.3 and result.last_epoch["effective_rank"] > 4

    ``assignments`` are ``--set`` strings applied after the small defaults above.
    """
    settings = DIGITS_SMALL + list(assignments or [])
    data = digits()
    cfg = make_config(method, "digits", data.pretrain, assignments=settings)
    random_init = random_init_knn(cfg, data, torch.device("cpu"))
    summary = fit(method, "digits", out_dir=tmp_path / method, assignments=settings, datasets=data)
    records = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    return LearningResult(summary["knn_top1"], random_init, records[-1], summary)


QUIET = ["train.device=cpu", "train.progress=false", "eval.every=0", "eval.linear_epochs=1", "eval.plots=false"]
