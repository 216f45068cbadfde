"""Figures a reader understands without the code: class names, what the map is and of how many points, whole
epochs, losses of different scales comparable, one legend naming method and data."""

from pathlib import Path

import numpy as np
import pytest

from selfsup.commands.compare import legend_labels
from selfsup.evaluate import plots


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save, kept open for inspection."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, target: figures.append(fig))
    monkeypatch.setattr(plots._pyplot(), "close", lambda fig: None)
    return figures


def _history(losses, knn_at=()):
    return [{"epoch": e + 1, "loss": loss, **({"knn_top1": 0.5} if e + 1 in knn_at else {})}
            for e, loss in enumerate(losses)]


def _epoch_ticks(ax):
    """The x ticks inside the axis' view."""
    ax.figure.canvas.draw()
    low, high = ax.get_xlim()
    return [t for t in ax.get_xticks() if low <= t <= high]


def test_embedding_map_names_classes_method_and_point_count(drawn):
    rng = np.random.default_rng(0)
    features, labels = rng.normal(size=(60, 8)), np.repeat([0, 1, 2], 20)
    plots.plot_embedding_map(features, labels, "unused.png", "byol on pets", max_points=45,
                             classes=["cat", "dog", "hamster"])
    (ax,) = drawn[0].axes
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["cat", "dog", "hamster"]
    assert "t-SNE" in ax.get_title() and "45 held-out" in ax.get_title() and "byol on pets" in ax.get_title()


def test_embedding_map_of_unlabelled_points_has_no_class_legend(drawn):
    plots.plot_embedding_map(np.random.default_rng(0).normal(size=(30, 4)), -np.ones(30, int), "unused.png")
    assert drawn[0].axes[0].get_legend() is None


def test_curves_tick_whole_epochs_and_mark_short_runs(drawn):
    plots.plot_curves(_history([5.0, 4.0], knn_at=(2,)), "unused.png", "simclr on digits")
    ax = drawn[0].axes[0]
    assert _epoch_ticks(ax) == [1.0, 2.0]
    assert ax.lines[0].get_marker() == "o"


def test_compare_normalises_losses_shares_one_legend_and_whole_epochs(drawn):
    plots.plot_runs({"vicreg on digits": _history([22.0, 21.0, 20.0], (3,)),
                     "byol on digits": _history([2.0, 1.0, 0.5], (3,))}, "unused.png")
    fig = drawn[0]
    knn, loss = fig.axes
    assert [line.get_ydata()[0] for line in loss.lines] == [1.0, 1.0]
    assert list(loss.lines[1].get_ydata()) == [1.0, 0.5, 0.25]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["vicreg on digits", "byol on digits"]
    assert knn.get_legend() is None and loss.get_legend() is None
    assert _epoch_ticks(knn) == _epoch_ticks(loss) == [1.0, 2.0, 3.0]
    assert knn.lines[0].get_marker() != knn.lines[1].get_marker()  # equal scores stay visible


def test_compare_labels_runs_by_method_and_data_and_tells_twins_apart():
    runs = [(Path("a/v0"), {"method": "byol", "data": {"spec": "digits"}}),
            (Path("b/v0"), {"method": "byol", "data": {"spec": "digits"}}),
            (Path("c/v0"), {"method": "simclr", "data": {"spec": "cifar10"}})]
    assert list(legend_labels(runs, [[], [], []])) == ["byol on digits (a/v0)", "byol on digits (b/v0)",
                                                       "simclr on cifar10"]


@pytest.mark.parametrize("count", [1, 2, 5])
def test_a_handful_of_points_gets_a_pca_map_instead_of_failing(drawn, count):
    plots.plot_embedding_map(np.random.default_rng(0).normal(size=(count, 6)), np.arange(count) % 2, "unused.png")
    assert f"PCA of {count} held-out" in drawn[0].axes[0].get_title()
