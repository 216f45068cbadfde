"""barlow_twins, vicreg, wmse and whiten against slow literal float64 references, edge cases and properties.

(2-process gather equality for barlow_twins and vicreg is in test_distributed_losses.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selfsup.losses import barlow_twins, vicreg, whiten, wmse

# ---- literal references: scalars and Python loops, written from the papers' formulas ---------------------------------


def ref_barlow_twins(z1, z2, lambda_offdiag, eps=1e-5):
    n, d = z1.shape

    def standardized(z):  # standardized(z)[j][b]: BatchNorm without affine, biased variance
        columns = []
        for j in range(d):
            mean = sum(z[b, j] for b in range(n)) / n
            variance = sum((z[b, j] - mean) ** 2 for b in range(n)) / n
            columns.append([(z[b, j] - mean) / torch.sqrt(variance + eps) for b in range(n)])
        return columns

    a, b = standardized(z1), standardized(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[i][k] * b[j][k] for k in range(n)) / n
            loss = loss + ((1 - c_ij) ** 2 if i == j else lambda_offdiag * c_ij**2)
    return loss


def ref_vicreg(z1, z2, sim, var, cov, eps=1e-4):
    n, d = z1.shape
    invariance = sum((z1[b, j] - z2[b, j]) ** 2 for b in range(n) for j in range(d)) / (n * d)

    def variance_and_covariance(z):
        means = [sum(z[b, j] for b in range(n)) / n for j in range(d)]
        c = [
            [sum((z[b, i] - means[i]) * (z[b, j] - means[j]) for b in range(n)) / (n - 1) for j in range(d)]
            for i in range(d)
        ]
        hinge = sum(torch.relu(1 - torch.sqrt(c[j][j] + eps)) for j in range(d)) / d
        off_diagonal = sum(c[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return hinge, off_diagonal

    v1, c1 = variance_and_covariance(z1)
    v2, c2 = variance_and_covariance(z2)
    return sim * invariance + var * (v1 + v2) / 2 + cov * (c1 + c2)


def ref_whiten(x, shrinkage):
    """Rows of x whitened: Cholesky-Banachiewicz of the shrunk covariance, then forward substitution."""
    n, d = x.shape
    means = [sum(x[b, j] for b in range(n)) / n for j in range(d)]
    centred = [[x[b, j] - means[j] for j in range(d)] for b in range(n)]
    c = [[sum(centred[b][i] * centred[b][j] for b in range(n)) / (n - 1) for j in range(d)] for i in range(d)]
    ridge = shrinkage * sum(c[j][j] for j in range(d)) / d + 1e-12
    a = [[(1 - shrinkage) * c[i][j] + (ridge if i == j else 0.0) for j in range(d)] for i in range(d)]
    lower = [[0.0] * d for _ in range(d)]
    for i in range(d):
        for j in range(i + 1):
            s = sum(lower[i][k] * lower[j][k] for k in range(j))
            lower[i][j] = torch.sqrt(a[i][i] - s) if i == j else (a[i][j] - s) / lower[j][j]
    white = []
    for b in range(n):
        w: list = []
        for i in range(d):
            w.append((centred[b][i] - sum(lower[i][k] * w[k] for k in range(i))) / lower[i][i])
        white.append(w)
    return white


def ref_wmse(z1, z2, w_size, w_iter, shrinkage, seed):
    generator = torch.Generator().manual_seed(seed)
    n = z1.shape[0]
    loss = 0.0
    for _ in range(w_iter):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, w_size):
            rows = order[start : start + w_size]
            v1, v2 = ref_whiten(z1[rows], shrinkage), ref_whiten(z2[rows], shrinkage)
            for a, b in zip(v1, v2):
                norm_a = torch.sqrt(sum(t**2 for t in a))
                norm_b = torch.sqrt(sum(t**2 for t in b))
                loss = loss + sum((s / norm_a - t / norm_b) ** 2 for s, t in zip(a, b)) / n
    return loss / w_iter


# ---- helpers ---------------------------------------------------------------------------------------------------------


def pair(n: int, d: int, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlated views with unequal scales and correlated dimensions."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    base = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix
    z1 = base + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    z2 = base * 1.5 + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64) + 2.0
    return z1.to(dtype).requires_grad_(), z2.to(dtype).requires_grad_()


def assert_matches(ours, reference, inputs, rtol=1e-9, atol=1e-11):
    torch.testing.assert_close(ours, torch.as_tensor(reference, dtype=ours.dtype), rtol=rtol, atol=atol)
    for g_ours, g_ref in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(reference, inputs)):
        torch.testing.assert_close(g_ours, g_ref, rtol=rtol * 100, atol=atol * 100)


# ---- values and gradients against the references ---------------------------------------------------------------------


@pytest.mark.parametrize("n, d, lambda_offdiag", [(6, 4, 5e-3), (2, 3, 0.5), (9, 2, 0.0051)])
def test_barlow_twins_matches_reference(n, d, lambda_offdiag):
    z1, z2 = pair(n, d, seed=n + d)
    ours = barlow_twins(z1, z2, lambda_offdiag=lambda_offdiag)
    assert_matches(ours, ref_barlow_twins(z1, z2, lambda_offdiag), (z1, z2))


@pytest.mark.parametrize(
    "n, d, coefficients", [(6, 4, (25.0, 25.0, 1.0)), (2, 3, (1.0, 2.0, 3.0)), (7, 5, (25.0, 25.0, 1.0))]
)
def test_vicreg_matches_reference(n, d, coefficients):
    z1, z2 = pair(n, d, seed=10 + n)
    z1, z2 = (0.3 * z1).detach().requires_grad_(), z2  # z1's variance under 1: the hinge is active
    sim, var, cov = coefficients
    ours = vicreg(z1, z2, sim=sim, var=var, cov=cov)
    reference = ref_vicreg(z1, z2, sim, var, cov)
    assert_matches(ours, reference, (z1, z2))


@pytest.mark.parametrize(
    "n, d, w_size, w_iter, shrinkage", [(8, 3, 4, 2, 0.0), (12, 3, 6, 1, 1e-2), (6, 2, 6, 3, 1e-4)]
)
def test_wmse_matches_reference(n, d, w_size, w_iter, shrinkage):
    z1, z2 = pair(n, d, seed=20 + n)
    ours = wmse(z1, z2, w_size=w_size, w_iter=w_iter, shrinkage=shrinkage, generator=torch.Generator().manual_seed(5))
    reference = ref_wmse(z1, z2, w_size, w_iter, shrinkage, seed=5)
    assert_matches(ours, reference, (z1, z2), rtol=1e-8, atol=1e-10)


def test_whiten_matches_reference():
    z1, _ = pair(7, 3, seed=3)
    reference = torch.stack([torch.stack(row) for row in ref_whiten(z1, 1e-3)])
    torch.testing.assert_close(whiten(z1, 1e-3), reference, rtol=1e-9, atol=1e-11)


# ---- properties ------------------------------------------------------------------------------------------------------


def test_whitened_batch_has_identity_covariance():
    z, _ = pair(64, 8, seed=4)  # strongly correlated, unequal scales
    white = whiten(z.detach(), shrinkage=0.0)
    centred = white - white.mean(0)
    torch.testing.assert_close(centred.T @ centred / 63, torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-10)
    assert not torch.allclose(torch.cov(z.detach().T), torch.eye(8, dtype=torch.float64), atol=0.1)
    # with the default shrinkage it stays near the identity; sub-batches [k, w, d] are whitened separately
    batches = whiten(z.detach().float().view(2, 32, 8))
    for sub in batches:
        torch.testing.assert_close(torch.cov(sub.T), torch.eye(8), rtol=0, atol=2e-3)


def test_barlow_twins_of_identical_views_is_the_redundancy_of_their_correlations():
    """C is then the correlation matrix: the invariance term vanishes, lambda * sum of r_ij^2 (i != j) remains."""
    z, _ = pair(20, 4, seed=6)
    z = z.detach()
    r = np.corrcoef(z.numpy().T)
    expected = 0.01 * float((r**2).sum() - np.trace(r**2))
    assert expected > 0.01
    assert barlow_twins(z, z, lambda_offdiag=0.01, eps=0.0).item() == pytest.approx(expected, rel=1e-10)


def test_decorrelated_identical_views_minimise_barlow_twins_vicreg_and_wmse():
    z, _ = pair(32, 5, seed=7)
    white = whiten(z.detach(), shrinkage=0.0)
    # float64 sums of O(1) terms: exact to ~1e-12 (machine epsilon 2.2e-16 times the terms' size and count)
    assert barlow_twins(white, white, eps=0.0).item() == pytest.approx(0.0, abs=1e-12)
    assert vicreg(2 * white, 2 * white).item() == pytest.approx(0.0, abs=1e-12)  # std 2 > 1: no hinge
    assert wmse(z, z, w_size=16).item() == pytest.approx(0.0, abs=1e-12)


def test_collapse_costs_more_than_a_spread_embedding():
    z1, z2 = pair(32, 6, seed=8)
    collapsed = z1.detach()[:1].expand(32, 6) + 1e-3 * torch.randn(32, 6, dtype=torch.float64)
    spread = whiten(z1.detach(), 0.0)
    assert vicreg(collapsed, collapsed) > vicreg(spread, spread) + 20  # the variance hinge: 25 * (1 - ~0)
    assert wmse(collapsed, collapsed + 1e-3 * torch.randn_like(collapsed), w_size=16) > 0.5  # whitening undoes it


# ---- edge cases ------------------------------------------------------------------------------------------------------


def test_zero_vectors_give_finite_losses_and_gradients():
    z1 = torch.zeros(8, 4, requires_grad=True)
    z2 = torch.zeros(8, 4, requires_grad=True)
    bt = barlow_twins(z1, z2)
    assert bt.item() == pytest.approx(4.0)  # C = 0: every diagonal term is 1
    vr = vicreg(z1, z2)
    assert vr.item() == pytest.approx(25.0 * (1 - 1e-2))  # hinge at std sqrt(eps) = 0.01 for both views
    wm = wmse(z1, z2, w_size=4)
    for loss in (bt, vr, wm):
        grads = torch.autograd.grad(loss, (z1, z2))
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)


def test_batch_of_two_and_errors():
    z1, z2 = pair(2, 3, seed=9)
    for loss in (barlow_twins(z1, z2), vicreg(z1, z2), wmse(z1, z2, w_size=2)):
        assert torch.isfinite(loss)
        assert all(torch.isfinite(g).all() for g in torch.autograd.grad(loss, (z1, z2)))
    one = torch.randn(1, 3)
    with pytest.raises(ValueError, match="at least 2 samples"):
        barlow_twins(one, one)
    with pytest.raises(ValueError, match="at least 2 samples"):
        vicreg(one, one)
    with pytest.raises(ValueError, match="multiple of loss.w_size"):
        wmse(torch.randn(10, 3), torch.randn(10, 3), w_size=4)
    with pytest.raises(ValueError, match="must both be"):
        barlow_twins(torch.randn(4, 3), torch.randn(4, 2))


def test_near_singular_covariance_is_safe():
    """Sub-batches smaller than the dimension and duplicated dimensions: the shrunk Cholesky stays finite."""
    base, _ = pair(16, 3, seed=11)
    rank_deficient = torch.cat([base, base, base[:, :1]], dim=1).detach().requires_grad_()  # 7 dims of rank 3
    other = (rank_deficient.detach() + 0.1 * torch.randn(16, 7, dtype=torch.float64)).requires_grad_()
    for w_size in (4, 16):  # 4 < 7 dimensions: singular sample covariance
        loss = wmse(rank_deficient, other, w_size=w_size)
        grads = torch.autograd.grad(loss, (rank_deficient, other))
        assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)


def test_bf16_inputs_give_finite_float32_losses_close_to_float32():
    z1, z2 = pair(16, 8, seed=12, dtype=torch.float32)
    cases = {
        "barlow_twins": lambda a, b: barlow_twins(a, b),
        "vicreg": lambda a, b: vicreg(a, b),
        "wmse": lambda a, b: wmse(a, b, w_size=16),
    }
    for name, loss_fn in cases.items():
        a = z1.detach().bfloat16().requires_grad_()
        b = z2.detach().bfloat16().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_fn(a, b)
        assert loss.dtype == torch.float32, name
        grads = torch.autograd.grad(loss, (a, b))
        assert all(torch.isfinite(g.float()).all() for g in grads), name
        exact = loss_fn(a.detach().float(), b.detach().float())
        assert loss.item() == pytest.approx(exact.item(), rel=1e-4), name
