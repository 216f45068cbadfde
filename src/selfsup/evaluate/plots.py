"""Figures of a run: training curves and a 2-D map of the embeddings coloured by class.

Each figure goes to a path or to an open binary file (as PNG): a run folder's figures are drawn into the
new file ``run.files.atomic_write`` renames into place, never written through a link at their name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, target: str | Path | BinaryIO) -> None:
    """``fig`` to ``target``: a path (its suffix picks the format), or an open binary file (PNG)."""
    fig.savefig(target, dpi=120, **({} if isinstance(target, (str, Path)) else {"format": "png"}))


def plot_curves(history: list[dict[str, Any]], path: str | Path | BinaryIO, title: str = "") -> None:
    """Loss per epoch (left axis) and kNN top-1 where evaluated (right axis)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["loss"] for r in history], color="tab:blue", label="loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss", color="tab:blue")
    evaluated = [r for r in history if r.get("knn_top1") is not None]
    if evaluated:
        ax2 = ax.twinx()
        ax2.plot([r["epoch"] for r in evaluated], [100 * r["knn_top1"] for r in evaluated], "o-", color="tab:red")
        ax2.set_ylabel("kNN top-1 (%)", color="tab:red")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_embedding_map(
    features: np.ndarray, labels: np.ndarray, path: str | Path | BinaryIO, title: str = "", max_points: int = 2000,
    seed: int = 0,
) -> None:
    """t-SNE (van der Maaten & Hinton 2008) of at most ``max_points`` features, coloured by class."""
    from sklearn.manifold import TSNE

    plt = _pyplot()
    rng = np.random.default_rng(seed)
    if len(features) > max_points:
        keep = rng.choice(len(features), max_points, replace=False)
        features, labels = features[keep], labels[keep]
    perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
    points = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(features)
    fig, ax = plt.subplots(figsize=(5, 5))
    scatter = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=6)
    ax.legend(*scatter.legend_elements(), loc="best", fontsize=7, markerscale=0.8, title="class")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_runs(histories: dict[str, list[dict[str, Any]]], path: str | Path | BinaryIO) -> None:
    """kNN top-1 (left) and loss (right) per epoch of several runs, one colour per run (``selfsup compare``)."""
    plt = _pyplot()
    fig, (knn, loss) = plt.subplots(1, 2, figsize=(11, 4))
    for label, history in histories.items():
        evaluated = [r for r in history if r.get("knn_top1") is not None]
        line = loss.plot([r["epoch"] for r in history], [r["loss"] for r in history], label=label)[0]
        if evaluated:
            knn.plot([r["epoch"] for r in evaluated], [100 * r["knn_top1"] for r in evaluated], "o-",
                     color=line.get_color(), label=label)
    knn.set_xlabel("epoch")
    knn.set_ylabel("kNN top-1 (%)")
    knn.set_title("kNN top-1 where evaluated")
    loss.set_xlabel("epoch")
    loss.set_ylabel("loss")
    loss.set_title("training loss")
    loss.legend(loc="best", fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
