"""CPC on a UCR problem: pre-train on the training split, then a logistic-regression probe.

    python benchmarks/cpc_ucr.py [--data GunPoint] [--epochs 200] [--seeds 0 1 2] [--no-write]

Trains ``cpc`` with its ``sequence`` preset through the library's trainer on the training
split (labels unused), then fits scikit-learn's logistic regression (standardised inputs) on
the training split and reports test accuracy (mean and spread over seeds) for: the learned
representation, the same encoder at random initialisation, and the raw (normalised) series. Writes a "CPC on UCR"
section to benchmarks/RESULTS.md next to published time-series SSL results.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from selfsup.data.sequence_views import normalize
from selfsup.data.sequences import load_ucr
from selfsup.nn.backbones import build_backbone
from selfsup.train.setup import Datasets, make_config, seed_everything
from selfsup.train.trainer import fit

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## CPC on UCR"
# GunPoint test accuracy of unsupervised representations + SVM, from TS2Vec (Yue et al., AAAI 2022,
# arXiv:2106.10466), appendix table of full results on the 128 UCR datasets.
PUBLISHED = {
    "GunPoint": [("TS2Vec", 0.980), ("T-Loss", 0.980), ("TNC", 0.967), ("TS-TCC", 0.993), ("TST", 0.827), ("DTW (1-NN)", 0.907)]
}


def probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    return float(classifier.fit(train_x, train_y).score(test_x, test_y))


@torch.no_grad()
def represent(encoder: torch.nn.Module, data) -> np.ndarray:
    encoder.eval()
    return encoder(normalize(data.data, data.mean, data.std)).numpy()


def run_seed(datasets: Datasets, name: str, epochs: int | None, seed: int) -> tuple[dict, dict]:
    settings = ["train.device=cpu", "train.progress=false", "eval.every=0", f"train.seed={seed}"]
    if epochs:
        settings.append(f"train.epochs={epochs}")
    cfg = make_config("cpc", f"ucr:{name}", datasets.pretrain, assignments=settings)
    seed_everything(seed)
    encoder = build_backbone(cfg["backbone"], datasets.pretrain.channels, datasets.pretrain.input_size)
    random_init = copy.deepcopy(encoder)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        fit("cpc", f"ucr:{name}", out_dir=out, assignments=settings, encoder=encoder, datasets=datasets)
    wall = time.perf_counter() - start
    train, test = datasets.train, datasets.test
    y = train.labels.numpy(), test.labels.numpy()
    accuracies = {
        "cpc": probe(represent(encoder, train), y[0], represent(encoder, test), y[1]),
        "random_init": probe(represent(random_init, train), y[0], represent(random_init, test), y[1]),
        "wall_s": wall,
    }
    return accuracies, cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="GunPoint")
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()

    datasets = Datasets(*(load_ucr(args.data, split) for split in ("pretrain", "train", "test")))
    runs = []
    for seed in args.seeds:
        accuracies, cfg = run_seed(datasets, args.data, args.epochs, seed)
        print(json.dumps({"seed": seed, **accuracies}))
        runs.append(accuracies)
    train, test = datasets.train, datasets.test
    raw = probe(
        normalize(train.data, train.mean, train.std).flatten(1).numpy(), train.labels.numpy(),
        normalize(test.data, train.mean, train.std).flatten(1).numpy(), test.labels.numpy(),
    )
    result = {
        "data": args.data,
        "epochs": cfg["train"]["epochs"],
        "batch": cfg["train"]["batch_size"],
        "seeds": args.seeds,
        "cpc": [r["cpc"] for r in runs],
        "random_init": [r["random_init"] for r in runs],
        "raw": raw,
        "wall_s": round(float(np.mean([r["wall_s"] for r in runs])), 1),
        "device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
    }
    print(json.dumps(result))
    cpc, init = float(np.mean(result["cpc"])), float(np.mean(result["random_init"]))
    print(f"cpc / raw = {cpc / raw:.3f}   cpc / random-init = {cpc / init:.3f}")
    if not args.no_write:
        write_section(result, cfg)


def _spread(values: list[float]) -> str:
    return f"{np.mean(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


def write_section(result: dict, cfg: dict) -> None:
    backbone = cfg["backbone"]
    lines = [
        SECTION,
        "",
        f"`python benchmarks/cpc_ucr.py --data {result['data']}`: CPC pre-trained on the {result['data']} training split "
        f"(labels unused; conv_gru width {backbone['width']}, strides {backbone['strides']}, GRU {backbone['context_dim']}, "
        f"{cfg['head']['prediction_steps']} steps ahead, {result['epochs']} epochs, batch {result['batch']}, "
        f"{result['wall_s']} s per run on {result['device']}, shared and busy), then logistic regression on the training split, "
        f"accuracy on the test split; mean over seeds {result['seeds']}.",
        "",
        "| representation | test accuracy |",
        "|---|---|",
        f"| CPC (ours, mean-pooled GRU context) | {_spread(result['cpc'])} |",
        f"| same encoder, random init | {_spread(result['random_init'])} |",
        f"| raw series | {result['raw']:.3f} |",
    ]
    published = PUBLISHED.get(result["data"])
    if published:
        lines += [
            "",
            "Published on the same split (representation + RBF SVM; TS2Vec, Yue et al. AAAI 2022, arXiv:2106.10466, "
            "appendix table of the 128 UCR datasets): "
            + ", ".join(f"{name} {acc:.3f}" for name, acc in published)
            + ". Their probe is an SVM, ours a linear classifier. (Values transcribed from that table; the search "
            "tool did not return the table text, so re-check them against the paper before quoting.)",
        ]
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"
    else:
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + "\n".join(lines) + "\n" + (text[end:] if end >= 0 else "")
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
