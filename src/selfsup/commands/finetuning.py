"""``selfsup eval --protocol finetune --labels 1%|10%|N``: the wiring of ``evaluate/finetune.py`` to a run.

The labelled subset is drawn once, class-balanced, from the training split with a fixed seed, and written
with the result to ``RUN/eval/finetune-DATA-LABELS.json`` (its indices into the split, the count per class,
the recipe and the top-1), so the same subset can be read back and reused.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup.data import ArrayDataset
from selfsup.data.views import ViewMaker, ViewSpec, normalize, resolve
from selfsup.evaluate.finetune import balanced_subset, finetune_top1, simclr_recipe
from selfsup.nn.backbones import output_dim
from selfsup.run.report import write_json

# SimCLR's fine-tuning augmentation (Appendix B.5): random resized crop (their crop's area range, 0.08-1)
# and a left-right flip, nothing else.
PAPER_VIEW = ViewSpec(size=0, scale=(0.08, 1.0), flip_p=0.5)


def parse_labels(text: str) -> tuple[str, float]:
    """'10%' -> ('fraction', 0.1), '250' -> ('count', 250); one line for anything else."""
    text = str(text).strip()
    match = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*%", text)
    if match:
        fraction = float(match.group(1)) / 100
        if not 0 < fraction <= 1:
            raise ValueError(f"--labels {text}: a fraction of the labels is above 0 % and at most 100 %")
        return "fraction", fraction
    if text.isdigit() and int(text) > 0:
        return "count", int(text)
    raise ValueError(f"--labels takes a percentage of the training labels (1%, 10%) or a number of labelled "
                     f"images (250), not '{text}'")


def labelled_total(labels: str, train: ArrayDataset) -> tuple[int, float]:
    """(images, fraction of the training split) that ``--labels`` asks for; one line if it cannot be met."""
    kind, value = parse_labels(labels)
    available = int((train.labels >= 0).sum())
    if available == 0 or train.num_classes < 2:
        raise ValueError(f"--protocol finetune needs labels, and '{train.name}' has none (no class folders): put the "
                         "images in one folder per class, or evaluate on labelled data with --data SPEC")
    total = math.floor(value * available) if kind == "fraction" else int(value)
    if total > available:
        raise ValueError(f"--labels {labels}: the training split of '{train.name}' has {available} labelled images")
    if total < max(train.num_classes, 2):
        raise ValueError(
            f"--labels {labels} is {total} of {available} labelled images, fewer than one per class of the "
            f"{train.num_classes} classes of '{train.name}': ask for at least {max(train.num_classes, 2)} images"
        )
    return total, total / available


def augmentation(cfg: dict[str, Any], train: ArrayDataset) -> ViewMaker:
    """The paper's crop and flip; a run that trained on the grayscale views (small one-channel images) keeps
    their crop and no flip (a crop of 8 % loses the stroke that tells a 1 from a 7; a flip mirrors glyphs)."""
    spec = PAPER_VIEW
    if cfg["views"].get("preset") == "grayscale":
        settings = resolve({"preset": "grayscale"})
        spec = ViewSpec(size=0, scale=tuple(settings["scale"]), flip_p=settings["flip_p"])
    return ViewMaker([ViewSpec(**{**spec.__dict__, "size": train.input_size})], train.mean, train.std)


def finetune(
    run: Path,
    cfg: dict[str, Any],
    encoder: nn.Module,
    train: ArrayDataset,
    test: ArrayDataset,
    labels: str,
    device: torch.device,
    seed: int = 0,
) -> dict[str, Any]:
    """Fine-tune a copy of ``encoder`` on a class-balanced ``labels`` subset of ``train``; score it on ``test``."""
    if train.kind != "image" or not isinstance(train.data, torch.Tensor):
        raise ValueError("--protocol finetune is for in-memory image datasets (the views are image crops)")
    total, fraction = labelled_total(labels, train)
    if total == int((train.labels >= 0).sum()):
        indices = (train.labels >= 0).nonzero().flatten()
    else:
        indices = balanced_subset(train.labels, total, train.num_classes, seed)
    recipe = simclr_recipe(total, fraction)
    views = augmentation(cfg, train)
    encoder = encoder.to(device)
    width = output_dim(encoder, normalize(train.data[:2].to(device), train.mean, train.std))
    top1 = finetune_top1(
        encoder, width, train.num_classes, train.data[indices].to(device), train.labels[indices].to(device),
        test.data.to(device), test.labels.to(device), recipe,
        augment=lambda batch: views(batch)[0], prepare=lambda batch: normalize(batch, train.mean, train.std),
        seed=seed,
    )
    chosen = train.labels[indices]
    result_file = run / "eval" / f"finetune-{_slug(train.name)}-{_slug(labels)}.json"
    write_json(result_file, {
        "protocol": "finetune", "data": train.name, "labels": labels, "seed": seed, "top1": top1,
        "labelled_images": total, "fraction": fraction,
        "per_class": {train.classes[c]: int((chosen == c).sum()) for c in range(train.num_classes)},
        "recipe": {"source": "SimCLR (Chen et al. 2020) Appendix B.5, adapted (selfsup/evaluate/finetune.py)",
                   **recipe.as_dict()},
        "indices": indices.tolist(),
    })
    return {"top1": top1, "labelled_images": total, "steps": recipe.steps, "subset": str(result_file)}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text).replace("%", "pct")).strip("_")
