"""kNN, linear probe and collapse monitors against direct computations."""

import math

import torch
import torch.nn.functional as F

from selfsup.evaluate.knn import knn_predict, knn_top1
from selfsup.evaluate.linear import linear_probe_top1
from selfsup.evaluate.monitors import collapse_monitors, effective_rank


def reference_knn(train, train_y, test, k, t, classes):
    """Literal InstDisc weighted kNN, one query at a time."""
    out = []
    for q in test:
        sims = [float(F.cosine_similarity(q, x, dim=0)) for x in train]
        order = sorted(range(len(train)), key=lambda i: -sims[i])[:k]
        votes = [0.0] * classes
        for i in order:
            votes[int(train_y[i])] += math.exp(sims[i] / t)
        out.append(max(range(classes), key=lambda c: votes[c]))
    return torch.tensor(out)


def test_knn_matches_literal_formula():
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(60, 5, generator=g), torch.randn(15, 5, generator=g)
    train_y = torch.randint(0, 3, (60,), generator=g)
    for k, t in [(1, 0.1), (7, 0.07), (60, 1.0)]:
        assert torch.equal(knn_predict(train, train_y, test, k, t, 3, chunk_size=4), reference_knn(train, train_y, test, k, t, 3))


def test_knn_perfect_on_clusters_and_k_larger_than_memory():
    centers = torch.eye(4) * 10
    train = centers.repeat_interleave(5, 0) + 0.1 * torch.randn(20, 4)
    labels = torch.arange(4).repeat_interleave(5)
    assert knn_top1(train, labels, centers, torch.arange(4), k=500) == 1.0


def test_linear_probe_separates_linearly_separable_classes_and_not_noise():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 10, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    assert linear_probe_top1(x[:300], y[:300], x[300:], y[300:]) > 0.95
    noise_labels = torch.randint(0, 2, (400,), generator=g)
    assert linear_probe_top1(x[:300], noise_labels[:300], x[300:], noise_labels[300:]) < 0.7


def test_monitors_detect_collapse():
    g = torch.Generator().manual_seed(2)
    healthy = torch.randn(512, 32, generator=g)
    m = collapse_monitors(healthy, healthy + 0.01 * torch.randn(512, 32, generator=g))
    assert 0.9 < m["z_std_ratio"] < 1.1
    assert m["effective_rank"] > 28
    assert m["alignment"] < 0.01
    collapsed = torch.ones(512, 32) + 1e-7 * torch.randn(512, 32, generator=g)
    c = collapse_monitors(collapsed, collapsed)
    assert c["z_std_ratio"] < 1e-3
    assert c["uniformity"] > -1e-3  # all points in one place: log E exp(0) = 0
    line = torch.randn(512, 1, generator=g) * torch.randn(1, 32, generator=g)
    assert effective_rank(line) < 1.01


def test_uniformity_of_uniform_sphere_is_near_its_limit():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(2000, 3, generator=g)
    # For the uniform distribution on S^2, E exp(-2|x-y|^2) = (1 - e^-8) / 8.
    expected = math.log((1 - math.exp(-8)) / 8)
    assert abs(collapse_monitors(z, z)["uniformity"] - expected) < 0.05
