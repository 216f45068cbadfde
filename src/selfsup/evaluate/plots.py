"""Figures of a run: training curves and a 2-D map of the embeddings coloured by class.

Each figure goes to a path or to an open binary file (as PNG): a run folder's figures are drawn into the
new file ``run.files.atomic_write`` renames into place, never written through a link at their name.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


SHORT_RUN = 30  # epochs up to which each point gets a marker (a run of 2 epochs would otherwise show dots or nothing)


def _epoch_axis(ax: Any) -> None:
    """Whole-number epoch ticks (matplotlib would tick 1.0, 1.2, ... on a 2-epoch run)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")


def _style(points: int) -> str:
    return "o-" if points <= SHORT_RUN else "-"


def _save(fig: Any, target: str | Path | BinaryIO) -> None:
    """``fig`` to ``target``: a path (its suffix picks the format), or an open binary file (PNG)."""
    fig.savefig(target, dpi=120, **({} if isinstance(target, (str, Path)) else {"format": "png"}))


def plot_curves(history: list[dict[str, Any]], path: str | Path | BinaryIO, title: str = "") -> None:
    """Loss per epoch (left axis) and kNN top-1 where evaluated (right axis)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["loss"] for r in history], _style(len(epochs)), color="tab:blue", label="loss", markersize=3)
    _epoch_axis(ax)
    ax.set_ylabel("training loss", color="tab:blue")
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
    seed: int = 0, classes: list[str] | None = None,
) -> None:
    """t-SNE (van der Maaten & Hinton 2008) of at most ``max_points`` held-out features, coloured by class and
    named by ``classes`` (label i is ``classes[i]``; labels < 0 are unlabelled); the title says what is drawn.
    Fewer than ``MIN_TSNE_POINTS`` points get their first two principal components (t-SNE's perplexity needs more)."""
    plt = _pyplot()
    rng = np.random.default_rng(seed)
    if len(features) > max_points:
        keep = rng.choice(len(features), max_points, replace=False)
        features, labels = features[keep], labels[keep]
    points, how = _map_2d(features, seed)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    present = sorted(set(labels.tolist()))
    colours = plt.get_cmap("tab10" if len(present) <= 10 else "tab20")
    for i, label in enumerate(present):
        mine = labels == label
        name = "unlabelled" if label < 0 else (classes[label] if classes and label < len(classes) else str(label))
        ax.scatter(points[mine, 0], points[mine, 1], s=6, color=colours(i % colours.N), label=name)
    if 1 < len(present) <= 20:
        ax.legend(loc="best", fontsize=7, markerscale=1.5, title="class")
    ax.set_xticks([])
    ax.set_yticks([])
    what = f"{how} of {len(features)} held-out embeddings"
    ax.set_title(f"{title}\n{what}" if title else what, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


MIN_TSNE_POINTS = 10


def _map_2d(features: np.ndarray, seed: int) -> tuple[np.ndarray, str]:
    """[N, 2] points of ``features`` and the name of the map that made them."""
    if len(features) >= MIN_TSNE_POINTS:
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
        return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(features), "t-SNE"
    centred = features - features.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    points = centred @ axes[:2].T
    return np.pad(points, ((0, 0), (0, 2 - points.shape[1]))), "PCA"


def plot_runs(histories: dict[str, list[dict[str, Any]]], path: str | Path | BinaryIO) -> None:
    """kNN top-1 (left) and loss relative to its first epoch (right; losses of different methods differ in scale by
    10x and more) per epoch of several runs, one colour per run and one legend of ``histories``' keys below both."""
    plt = _pyplot()
    fig, (knn, loss) = plt.subplots(1, 2, figsize=(11, 4.4), sharex=True)
    for marker, (label, history) in zip(itertools.cycle("os^Dvp"), histories.items()):
        evaluated = [r for r in history if r.get("knn_top1") is not None]
        first = abs(history[0]["loss"]) or 1.0
        line = loss.plot([r["epoch"] for r in history], [r["loss"] / first for r in history],
                         marker=marker if len(history) <= SHORT_RUN else None, label=label, markersize=4)[0]
        if evaluated:  # runs that score the same would hide each other: hollow markers of their own shape
            knn.plot([r["epoch"] for r in evaluated], [100 * r["knn_top1"] for r in evaluated], marker=marker,
                     color=line.get_color(), markersize=7, markerfacecolor="none")
    for ax in (knn, loss):
        _epoch_axis(ax)
    knn.set_ylabel("kNN top-1 (%)")
    knn.set_title("kNN top-1 on the held-out split, where evaluated", fontsize=10)
    loss.set_ylabel("loss / |first epoch's loss|")
    loss.set_title("training loss, each relative to its first epoch", fontsize=10)
    fig.legend(loc="lower center", ncol=min(len(histories), 4), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(histories) - 1) // 4), 1, 1))
    _save(fig, path)
    plt.close(fig)
