"""From a method name and a data SPEC to a ready run: config, datasets, encoder, method, views, device."""

from __future__ import annotations

import itertools
import os
import random
import sys
from typing import Any

import numpy as np
import torch
from torch import nn

from selfsup import methods
from selfsup.config.build import DEFAULTS, build_config, deep_merge, scale_of
from selfsup.config.recipe import check_run_length, explicit_keys, fit_recipe
from selfsup.config.schema import check_config
from selfsup.data import ArrayDataset, load_dataset
from selfsup.data.base import Datasets
from selfsup.methods.base import Method, RunInfo
from selfsup.nn.backbones import CUSTOM, build_backbone, output_dim

MAX_MODEL_VALUES = 4 * 10**9  # parameters and buffers: 16 GB at fp32 before gradients and optimizer state


def load_datasets(spec: str, root: str | None, options: dict[str, Any] | None = None) -> Datasets:
    """The three splits of ``spec``; ``options`` is a config's ``data`` section (image_size, on_error, stream, workers)."""
    options = {**DEFAULTS["data"], **(options or {})}
    if options["on_error"] not in ("stop", "skip"):
        raise ValueError(f"data.on_error must be stop or skip, not '{options['on_error']}'")
    if options["stream"] not in ("auto", True, False):
        raise ValueError(f"data.stream must be auto, true or false, not '{options['stream']}'")
    workers = options["workers"]
    if workers != "auto" and (not isinstance(workers, int) or workers < 0):
        raise ValueError(f"data.workers must be auto or a whole number >= 0, not '{workers}'")
    kwargs = {
        "image_size": options["image_size"],
        "on_error": options["on_error"],
        "stream": None if options["stream"] == "auto" else options["stream"],
        "workers": None if workers == "auto" else workers,
        "progress": sys.stderr.isatty(),  # decoding bars only on a terminal: a log or a bad-input error stays clean
    }
    return Datasets(*(load_dataset(spec, root, split, **kwargs) for split in ("pretrain", "train", "test")))


def make_config(
    method: str,
    data_spec: str,
    data: ArrayDataset,
    data_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
    assignments: list[str] | None = None,
    fit_to_run: bool = True,
) -> dict[str, Any]:
    """The full run config: defaults, the method's preset for this data's scale, overrides, ``--set``.

    fit_to_run: rescale the preset's run-relative values (warm-up, batch, memories, EMA, prototypes,
    kNN k, small-image backbone and views) to this data and run length, leaving every key the user
    set alone (``train.recipe``); False keeps the preset verbatim (``selfsup bench``).
    """
    cls = methods.get(method)
    if cls.data_kind not in ("any", data.kind):
        raise ValueError(f"method '{method}' trains on {cls.data_kind} data but '{data_spec}' holds {data.kind}s")
    scale = scale_of(data.kind, data.input_size)
    base = {"data": {"spec": data_spec, "dir": data_dir}}
    cfg = build_config(method, methods.preset(method), scale, deep_merge(base, overrides or {}), assignments)
    check_config(cfg)  # keys, types and ranges before the recipe sizes anything by them
    return fit_recipe(cfg, data, explicit_keys(overrides, assignments)) if fit_to_run else cfg


def validate(cfg: dict[str, Any], data: ArrayDataset, world: int) -> None:
    """One-line errors for settings that cannot work, before the model is built."""
    check_run_length(cfg, len(data))
    batch = cfg["train"]["batch_size"]
    if batch > len(data):
        raise ValueError(
            f"batch size {batch} is larger than the dataset ({len(data)} samples): use --batch-size {len(data)} or less"
        )
    if batch % world:
        raise ValueError(f"batch size {batch} is not divisible by the {world} processes: pick a multiple of {world}")
    if batch // world < 2:
        raise ValueError(
            f"batch size {batch} leaves {batch // world} sample per process, and batch norm needs at least 2: "
            f"use --batch-size {2 * world} or more (the dataset has {len(data)} samples)"
        )
    if methods.get(cfg["method"]).needs_labels and bool((data.labels < 0).all()):
        raise ValueError(f"method '{cfg['method']}' needs labels but '{cfg['data']['spec']}' has none")
    check_model_size(cfg, data)


def check_model_size(cfg: dict[str, Any], data: ArrayDataset) -> None:
    """One line if the configured model would hold more than ``MAX_MODEL_VALUES`` parameters and buffers.

    Counted on the meta device (shapes only, no memory), so that a wide backbone, a huge projector or a
    queue of 10^10 keys is refused in a second instead of after trying to allocate hundreds of GB. A run's custom
    encoder (``backbone.name: custom``) is the user's module, built before selfsup sees it: not counted.
    """
    if cfg["backbone"].get("name") == CUSTOM:
        return
    try:
        with torch.device("meta"):
            model = build_method(cfg, data, steps_per_epoch=1)
    except (RuntimeError, NotImplementedError):  # a module that reads a value while it is built (a library's model)
        return
    values = sum(t.numel() for t in itertools.chain(model.parameters(), model.buffers()))
    if values > MAX_MODEL_VALUES:
        raise ValueError(
            f"this {cfg['method']} model would hold {values:.3g} weights and buffers ({4 * values / 1e9:.0f} GB at "
            f"fp32), more than the {MAX_MODEL_VALUES:.0e} selfsup builds: choose a smaller backbone.width, "
            "head size or queue"
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but no CUDA GPU is visible: use --device cpu")
        local = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device("cuda", local if name == "cuda" else torch.device(name).index)
    if name != "cpu":
        raise ValueError(f"unknown device '{name}'; use cpu, cuda or auto")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_method(
    cfg: dict[str, Any], data: ArrayDataset, steps_per_epoch: int, encoder: nn.Module | None = None
) -> Method:
    """The encoder (from ``cfg['backbone']`` unless given) wrapped by the configured method."""
    if encoder is None:
        encoder = build_backbone(cfg["backbone"], data.channels, data.input_size)
    example = torch.zeros((2,) + tuple(data.data.shape[1:]))
    info = RunInfo(
        feature_dim=output_dim(encoder, example),
        num_samples=len(data),
        num_classes=data.num_classes,
        steps_per_epoch=steps_per_epoch,
        epochs=cfg["train"]["epochs"],
        channels=data.channels,
        input_size=data.input_size,
    )
    return methods.get(cfg["method"])(encoder, cfg, info)
