"""``selfsup demo``: SimCLR on scikit-learn's digits, on CPU, in under a minute.

Prints held-out kNN accuracy of raw pixels, of the random-init encoder and of the
trained encoder, and leaves a run folder with the loss/kNN curve and a t-SNE map.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from selfsup.commands.evaluation import random_init_knn
from selfsup.evaluate.scoring import pixel_knn
from selfsup.run.run_folder import next_version
from selfsup.train.setup import load_datasets, make_config
from selfsup.train.trainer import fit

DEMO_SETTINGS = [  # the rest (backbone, batch, warm-up, views, kNN k) the recipe fits to digits
    "backbone.width=16",
    "train.epochs=60",
    "train.device=cpu",
    "eval.every=5",
]


def demo(
    out: str | Path | None = None, assignments: list[str] | None = None, progress: bool = True
) -> dict[str, Any]:
    """Run the demo into ``out`` (default: a new ``runs/demo/version_N``); returns the three kNN accuracies and the
    run folder."""
    out = out or next_version(Path("runs") / "demo")
    if "OMP_NUM_THREADS" not in os.environ:
        # A convnet on 8 px images: one thread does the work, and a second one waiting on a busy core
        # made a run take 219 s instead of 27 s on 2 cores with one of them loaded.
        torch.set_num_threads(1)
    settings = DEMO_SETTINGS + [f"train.progress={str(progress).lower()}"] + list(assignments or [])
    datasets = load_datasets("digits", None)
    cfg = make_config("simclr", "digits", datasets.pretrain, assignments=settings)
    k, t = cfg["eval"]["knn_k"], cfg["eval"]["knn_t"]
    test = datasets.test

    pixels = pixel_knn(datasets, k, t)
    random_init = random_init_knn(cfg, datasets, torch.device("cpu"))
    summary = fit("simclr", "digits", out_dir=out, assignments=settings, datasets=datasets)
    result = {
        "knn_raw_pixels": pixels,
        "knn_random_init": random_init,
        "knn_trained": summary["knn_top1"],
        "linear_trained": summary["linear_top1"],
        "wall_s": summary["wall_s"],
        "run": str(out),
    }
    print(f"\nSimCLR on digits ({len(datasets.pretrain)} train / {len(test)} held-out images), kNN top-1 (k={k}):")
    print(f"  raw pixels           {100 * pixels:5.1f} %")
    print(f"  random-init encoder  {100 * random_init:5.1f} %")
    print(f"  trained encoder      {100 * summary['knn_top1']:5.1f} %   (linear probe {100 * summary['linear_top1']:.1f} %)")
    print(f"wall time {summary['wall_s']:.0f} s (training {summary['phases_s']['training']:.0f} s); "
          f"figures: {Path(out) / 'curves.png'}, {Path(out) / 'embedding_map.png'}")
    return result
