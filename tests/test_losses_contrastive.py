"""Contrastive losses against slow literal references (values and gradients), edge cases, properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses import (
    adco,
    alignment,
    batch_triplet,
    contrastive_margin,
    cpc,
    deep_infomax,
    info_nce,
    nce,
    nt_xent,
    supcon,
    triplet,
    uniformity,
)
from tests import reference

SHAPES = [(2, 3), (5, 4)]


def randn(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def assert_same_value_and_gradients(loss_fn, reference_fn, *inputs):
    """loss_fn and reference_fn agree on the value and on the gradient w.r.t. every input tensor."""
    inputs = [x.clone().requires_grad_(True) for x in inputs]
    ours, theirs = loss_fn(*inputs), reference_fn(*inputs)
    torch.testing.assert_close(ours, theirs.reshape(ours.shape), rtol=1e-9, atol=1e-12)
    for g_ours, g_theirs in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(theirs, inputs)):
        torch.testing.assert_close(g_ours, g_theirs, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("batch,dim", SHAPES)
@pytest.mark.parametrize("normalize", [True, False])
def test_info_nce_matches_reference(batch, dim, normalize):
    q, k = randn(batch, dim, seed=1), randn(batch, dim, seed=2)
    shared, per_query = randn(3, dim, seed=3), randn(batch, 3, dim, seed=4)
    for negatives in (None, shared, per_query):
        assert_same_value_and_gradients(
            lambda q, k: info_nce(q, k, negatives, temperature=0.3, normalize=normalize),
            lambda q, k: reference.info_nce(q, k, negatives, temperature=0.3, normalize=normalize),
            q,
            k,
        )


@pytest.mark.parametrize("batch,dim", SHAPES)
def test_nt_xent_matches_reference(batch, dim):
    assert_same_value_and_gradients(
        lambda a, b: nt_xent(a, b, temperature=0.5),
        lambda a, b: reference.nt_xent(a, b, temperature=0.5),
        randn(batch, dim, seed=1),
        randn(batch, dim, seed=2),
    )


SUPCON_LABELS = [[0, 1, 0, 2, 1], [3, 3, 3, 3, 3], [0, 1, 2, 3, 0]]


@pytest.mark.parametrize(
    "labels,views", [(None, 2), (None, 3)] + [(labels, views) for labels in SUPCON_LABELS for views in (1, 2, 3)]
)
def test_supcon_matches_reference(labels, views):
    """Includes classes with a single member (their anchors have no positive when views == 1)."""
    labels = None if labels is None else torch.tensor(labels)
    assert_same_value_and_gradients(
        lambda f: supcon(f, labels, temperature=0.2),
        lambda f: reference.supcon(f, labels, temperature=0.2) * (0.2 / 0.07),  # the authors' t / t_base
        randn(5, views, 4),
    )


def supcon_loss_of_the_authors(features, labels=None, temperature=0.07, base_temperature=0.07):
    """HobbitLong/SupContrast losses.py SupConLoss.forward (contrast_mode 'all'), transcribed step by step."""
    batch_size = features.shape[0]
    mask = torch.eye(batch_size) if labels is None else torch.eq(labels.view(-1, 1), labels.view(1, -1)).float()
    contrast_count = features.shape[1]
    contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor_feature, anchor_count = contrast_feature, contrast_count
    anchor_dot_contrast = torch.div(torch.matmul(anchor_feature, contrast_feature.T), temperature)
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    mask = mask.repeat(anchor_count, contrast_count)
    logits_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(batch_size * anchor_count).view(-1, 1), 0)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True) + 1e-9)
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.view(anchor_count, batch_size).mean()


@pytest.mark.parametrize("labels", [None, [0, 1, 0, 2, 1, 2], [3, 3, 3, 3, 3, 3]])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_supcon_equals_the_authors_loss_with_its_base_temperature(labels, temperature):
    """Features already on the unit sphere (the authors normalise in the model); 2 views: every anchor has a positive."""
    features = torch.nn.functional.normalize(randn(6, 2, 5).float(), dim=-1)
    labels = None if labels is None else torch.tensor(labels)
    expected = supcon_loss_of_the_authors(features, labels, temperature=temperature)
    torch.testing.assert_close(supcon(features, labels, temperature=temperature), expected, rtol=1e-5, atol=1e-6)
    assert supcon(features, labels, temperature=temperature, base_temperature=temperature).item() == pytest.approx(
        expected.item() * 0.07 / temperature, rel=1e-5
    )


def test_supcon_without_labels_is_nt_xent():
    features = randn(6, 2, 5)
    torch.testing.assert_close(
        supcon(features, temperature=0.3, base_temperature=0.3), nt_xent(features[:, 0], features[:, 1], 0.3)
    )


def test_supcon_without_any_positive_is_zero_not_nan():
    features = randn(4, 1, 3).requires_grad_(True)
    loss = supcon(features, torch.tensor([0, 1, 2, 3]))
    (grad,) = torch.autograd.grad(loss, features)
    assert loss.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("batch,k", [(2, 3), (4, 5)])
def test_nce_matches_reference(batch, k):
    noise_prob = 1 / 100
    for scores_noise in (randn(batch, k, seed=2) - 4, randn(batch, 2 * k, seed=3) - 4):
        assert_same_value_and_gradients(
            lambda d, n: nce(d, n, noise_prob, k),
            lambda d, n: reference.nce(d, n, noise_prob, k),
            randn(batch, seed=1) - 3,
            scores_noise,
        )


@pytest.mark.parametrize("batch,length,steps", [(2, 3, 1), (3, 5, 2)])
def test_cpc_matches_reference(batch, length, steps):
    context, latents = randn(batch, length, 3, seed=1) / 2, randn(batch, length, 4, seed=2) / 2
    weights = [randn(4, 3, seed=10 + k) for k in range(steps)]
    assert_same_value_and_gradients(
        lambda c, z, *w: cpc(c, z, list(w)),
        lambda c, z, *w: reference.cpc(c, z, list(w)),
        context,
        latents,
        *weights,
    )


def test_cpc_accepts_modules_as_predictors():
    context, latents = randn(2, 4, 3, seed=1), randn(2, 4, 5, seed=2)
    linears = [torch.nn.Linear(3, 5, bias=False).double() for _ in range(2)]
    torch.testing.assert_close(cpc(context, latents, linears), cpc(context, latents, [m.weight for m in linears]))


@pytest.mark.parametrize("estimator", ["jsd", "infonce"])
@pytest.mark.parametrize("batch,locations", [(2, 1), (3, 4)])
def test_deep_infomax_matches_reference(estimator, batch, locations):
    assert_same_value_and_gradients(
        lambda l, g: deep_infomax(l, g, estimator),
        lambda l, g: reference.deep_infomax(l, g, estimator),
        randn(batch, locations, 3, seed=1),
        randn(batch, 3, seed=2),
    )


def test_deep_infomax_feature_map_is_its_locations():
    feature_map, global_ = randn(3, 4, 2, 2), randn(3, 4)
    as_locations = feature_map.flatten(2).transpose(1, 2)
    for estimator in ("jsd", "infonce"):
        torch.testing.assert_close(
            deep_infomax(feature_map, global_, estimator), deep_infomax(as_locations, global_, estimator)
        )


def test_adco_with_the_batch_keys_as_negatives_is_the_authors_loss():
    """maple-research-lab/AdCo training/train.py: logits [q k^T, q N^T] / t, the target the own key; the negatives'
    (ascent) gradient is that of the same loss at t_neg, the batch keys take none."""
    q, k, negatives = randn(4, 3, seed=1), randn(4, 3, seed=2), randn(6, 3, seed=3)
    q, negatives = q.requires_grad_(True), negatives.requires_grad_(True)
    loss = adco(q, k, negatives, t_pos=0.2, t_neg=0.05, batch_keys=True)
    grad_q, grad_negatives = torch.autograd.grad(loss, [q, negatives])

    def literal(t):
        unit = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
        uq, uk, un = unit(q), unit(k), unit(negatives)
        total = 0.0
        for i in range(len(q)):
            logits = torch.cat([uq[i] @ uk.T, uq[i] @ un.T]) / t
            total = total - (logits[i] - torch.logsumexp(logits, 0))
        return total / len(q)

    torch.testing.assert_close(loss, literal(0.2))
    torch.testing.assert_close(grad_q, torch.autograd.grad(literal(0.2), q)[0])
    torch.testing.assert_close(grad_negatives, -torch.autograd.grad(literal(0.05), negatives)[0])


def test_adco_encoder_descends_and_negatives_ascend():
    """Value and encoder gradient are those of L(t_pos); the negatives get -grad L(t_neg)."""
    q, k, negatives = randn(4, 3, seed=1), randn(4, 3, seed=2), randn(6, 3, seed=3)
    q, negatives = q.requires_grad_(True), negatives.requires_grad_(True)
    loss = adco(q, k, negatives, t_pos=0.2, t_neg=0.05)
    grad_q, grad_negatives = torch.autograd.grad(loss, [q, negatives])

    def literal(t):
        unit = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
        return reference.info_nce(unit(q), unit(k), unit(negatives), temperature=t, normalize=False)

    torch.testing.assert_close(loss, literal(0.2))
    torch.testing.assert_close(grad_q, torch.autograd.grad(literal(0.2), q)[0])
    torch.testing.assert_close(grad_negatives, -torch.autograd.grad(literal(0.05), negatives)[0])

    before = literal(0.05).item()
    with torch.no_grad():
        negatives -= 0.01 * grad_negatives  # an ordinary descent step on the returned loss
    assert literal(0.05).item() > before


def test_contrastive_margin_matches_reference():
    x1, x2 = randn(6, 3, seed=1), randn(6, 3, seed=2) / 3
    same = torch.tensor([1, 0, 1, 0, 0, 1])
    for margin in (0.5, 4.0):  # some dissimilar pairs inside the margin, some outside
        assert_same_value_and_gradients(
            lambda a, b: contrastive_margin(a, b, same, margin),
            lambda a, b: reference.contrastive_margin(a, b, same, margin),
            x1,
            x2,
        )


def test_triplet_matches_reference():
    assert_same_value_and_gradients(
        lambda a, p, n: triplet(a, p, n, margin=1.0),
        lambda a, p, n: reference.triplet(a, p, n, margin=1.0),
        randn(5, 3, seed=1),
        randn(5, 3, seed=2),
        randn(5, 3, seed=3),
    )


@pytest.mark.parametrize("mining", ["all", "hard", "semihard"])
@pytest.mark.parametrize("labels", [[0, 0, 1, 1, 2, 0, 1, 3], [0, 1, 0, 1]])
def test_batch_triplet_matches_reference(mining, labels):
    labels = torch.tensor(labels)
    assert_same_value_and_gradients(
        lambda x: batch_triplet(x, labels, margin=1.0, mining=mining),
        lambda x: reference.batch_triplet(x, labels, margin=1.0, mining=mining),
        randn(len(labels), 3),
    )


def test_batch_triplet_semihard_prefers_negative_just_beyond_positive():
    # anchor 0 at the origin; positive at distance^2 1; negatives at distance^2 0.25, 1.44, 4
    x = torch.tensor([[0.0], [1.0], [0.5], [1.2], [2.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2, 3])  # only anchors 0 and 1 have a positive
    loss_anchor0 = F.relu(torch.tensor(1.0 - 1.44 + 1.0))
    # anchor 1: positive at d^2 1, negatives at d^2 0.25, 0.04, 1; none is farther, so the farthest
    loss_anchor1 = F.relu(torch.tensor(1.0 - 1.0 + 1.0))
    expected = (loss_anchor0 + loss_anchor1) / 2
    torch.testing.assert_close(batch_triplet(x, labels, margin=1.0, mining="semihard"), expected.double())


@pytest.mark.parametrize("batch,dim", SHAPES)
def test_alignment_and_uniformity_match_reference(batch, dim):
    x, y = randn(batch, dim, seed=1), randn(batch, dim, seed=2)
    for alpha in (2, 1.5):
        assert_same_value_and_gradients(
            lambda a, b: alignment(a, b, alpha), lambda a, b: reference.alignment(a, b, alpha), x, y
        )
    for t in (2, 0.5):
        assert_same_value_and_gradients(lambda a: uniformity(a, t), lambda a: reference.uniformity(a, t), x)


def test_identical_views_of_orthonormal_vectors_give_the_closed_form():
    """Positive cosine 1 and 2N-2 negatives of cosine 0: L = log(1 + (2N-2) exp(-1/t))."""
    n, t = 4, 0.5
    z = torch.eye(n, dtype=torch.float64)
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / t))
    assert nt_xent(z, z, temperature=t).item() == pytest.approx(expected)
    assert supcon(torch.stack([z, z], 1), temperature=t, base_temperature=t).item() == pytest.approx(expected)
    assert info_nce(z, z, temperature=t).item() == pytest.approx(math.log(1 + (n - 1) * math.exp(-1 / t)))
    assert alignment(z, z).item() == 0.0
    assert contrastive_margin(z, z, torch.ones(n)).item() == 0.0


def zero_row_cases():
    z = randn(4, 3)
    z[1] = 0
    labels = torch.tensor([0, 0, 1, 1])
    return {
        "info_nce": (lambda x: info_nce(x, x.flip(0)), z),
        "info_nce_queue": (lambda x: info_nce(x, x.flip(0), x), z),
        "nt_xent": (lambda x: nt_xent(x, x.flip(0)), z),
        "supcon": (lambda x: supcon(torch.stack([x, x], 1), labels), z),
        "adco": (lambda x: adco(x, x.flip(0), x), z),
        "cpc": (lambda x: cpc(x[None].expand(2, -1, -1), x[None].expand(2, -1, -1), [torch.eye(3, dtype=x.dtype)]), z),
        "deep_infomax_jsd": (lambda x: deep_infomax(x[None].expand(2, -1, -1), x[:2], "jsd"), z),
        "deep_infomax_infonce": (lambda x: deep_infomax(x[None].expand(2, -1, -1), x[:2], "infonce"), z),
        "contrastive_margin": (lambda x: contrastive_margin(x, torch.zeros_like(x), torch.tensor([1, 0, 0, 1])), z),
        "triplet": (lambda x: triplet(x, x, torch.zeros_like(x)), z),
        "batch_triplet_all": (lambda x: batch_triplet(torch.cat([x, x]), torch.cat([labels, labels])), z),
        "batch_triplet_hard": (lambda x: batch_triplet(torch.cat([x, x]), torch.cat([labels, labels]), mining="hard"), z),
        "batch_triplet_semihard": (
            lambda x: batch_triplet(torch.cat([x, x]), torch.cat([labels, labels]), mining="semihard"),
            z,
        ),
        "alignment": (lambda x: alignment(x, torch.zeros_like(x), alpha=1.5), z),
        "uniformity": (lambda x: uniformity(torch.cat([x, x])), z),
        "nce": (lambda x: nce(x[:, 0], x, 1e-3, 3), z),
    }


@pytest.mark.parametrize("name", list(zero_row_cases()))
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_zero_vectors_identical_points_and_bf16_give_finite_loss_and_gradients(name, dtype):
    loss_fn, z = zero_row_cases()[name]
    z = z.to(dtype).requires_grad_(True)
    loss = loss_fn(z)
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_batch_of_two():
    a, b = randn(2, 3, seed=1), randn(2, 3, seed=2)
    torch.testing.assert_close(nt_xent(a, b), reference.nt_xent(a, b))
    torch.testing.assert_close(info_nce(a, b), reference.info_nce(a, b))
    torch.testing.assert_close(
        supcon(torch.stack([a, b], 1), base_temperature=0.1), reference.supcon(torch.stack([a, b], 1))
    )
    torch.testing.assert_close(uniformity(a), reference.uniformity(a))
    # two samples of different classes: no anchor has a positive, the loss is 0 and not NaN
    assert batch_triplet(a, torch.tensor([0, 1])).item() == 0.0


def correlated_gaussians(n, rho, dims, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dims, dtype=torch.float64, generator=g)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, dims, dtype=torch.float64, generator=g)
    return x, y


def info_nce_mutual_information_bound(candidates, rho, dims, batches=32):
    """log(N) - L with the optimal critic log p(y|x)/p(y), written as a dot product:
    rho x.y/(1-rho^2) - rho^2 |y|^2 / (2(1-rho^2)) (terms of x alone cancel in the softmax)."""
    x, y = correlated_gaussians(batches * candidates, rho, dims, seed=candidates)
    scale = 1 / (1 - rho**2)
    query = torch.cat([rho * scale * x, torch.full_like(x, -(rho**2) * scale / 2)], 1)
    key = torch.cat([y, y**2], 1)
    losses = [
        info_nce(q, k, temperature=1.0, normalize=False)
        for q, k in zip(query.split(candidates), key.split(candidates))
    ]
    return math.log(candidates) - torch.stack(losses).mean().item()


def test_info_nce_bound_stays_below_true_mutual_information_and_rises_with_n():
    rho, dims = 0.9, 4
    true_mi = reference.gaussian_mutual_information(rho, dims)
    bounds = [info_nce_mutual_information_bound(n, rho, dims) for n in (2, 16, 256)]
    assert all(b < true_mi for b in bounds), (bounds, true_mi)
    assert all(earlier < later for earlier, later in zip(bounds, bounds[1:])), bounds
    assert bounds[-1] > 0.85 * true_mi, (bounds, true_mi)  # and the bound is tight with an optimal critic
