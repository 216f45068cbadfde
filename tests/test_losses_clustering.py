"""sinkhorn_knopp, swav and deepcluster_v2 against literal references, edge cases and properties.

The 2-process gloo check of gather=True (Sinkhorn normalised over the global batch) is in
test_distributed_losses.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.losses import deepcluster_v2, sinkhorn_knopp, swav

# ---- slow literal references (Python loops over scalars, float64) ---------------------------------------------------


def sinkhorn_reference(scores: list[list[float]], epsilon: float, iters: int) -> list[list[float]]:
    """SwAV's Algorithm 1 as written: Q = exp(S^T / eps) / sum, then alternate row / column scaling."""
    batch, k = len(scores), len(scores[0])
    q = [[math.exp(scores[b][j] / epsilon) for b in range(batch)] for j in range(k)]
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iters):
        for j in range(k):
            row_sum = sum(q[j])
            q[j] = [v / row_sum / k for v in q[j]]
        for b in range(batch):
            col_sum = sum(q[j][b] for j in range(k))
            for j in range(k):
                q[j][b] = q[j][b] / col_sum / batch
    return [[q[j][b] * batch for j in range(k)] for b in range(batch)]


def log_softmax_row(row: torch.Tensor, temperature: float) -> list[torch.Tensor]:
    exps = [torch.exp(row[j] / temperature) for j in range(len(row))]
    log_total = torch.log(sum(exps))
    return [row[j] / temperature - log_total for j in range(len(row))]


def swav_reference(crops, temperature, epsilon, iters, queue=None):
    per_code_crop = []
    for i in (0, 1):
        problem = crops[i].detach().tolist()
        if queue is not None:
            problem = queue[i].tolist() + problem
        codes = sinkhorn_reference(problem, epsilon, iters)[-len(crops[i]) :]
        terms = []
        for v, scores in enumerate(crops):
            if v == i:
                continue
            per_sample = []
            for b in range(len(scores)):
                log_p = log_softmax_row(scores[b], temperature)
                per_sample.append(-sum(codes[b][j] * log_p[j] for j in range(len(log_p))))
            terms.append(sum(per_sample) / len(per_sample))
        per_code_crop.append(sum(terms) / len(terms))
    return sum(per_code_crop) / 2


def deepcluster_reference(scores, assignments, temperature):
    heads = []
    for head_scores, head_assignments in zip(scores, assignments):
        losses = [
            -log_softmax_row(head_scores[i], temperature)[int(head_assignments[i])]
            for i in range(len(head_scores))
            if head_assignments[i] >= 0
        ]
        heads.append(sum(losses) / len(losses))
    return sum(heads) / len(heads)


def cosine_scores(batch: int, k: int, dim: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, dim, generator=g, dtype=torch.float64), dim=1)
    return z @ c.T


# ---- sinkhorn_knopp ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch,k,iters,epsilon", [(4, 3, 1, 0.05), (7, 5, 3, 0.05), (2, 6, 3, 0.1), (9, 4, 10, 0.5)])
def test_sinkhorn_matches_reference(batch, k, iters, epsilon):
    scores = cosine_scores(batch, k, seed=batch + k)
    expected = torch.tensor(sinkhorn_reference(scores.tolist(), epsilon, iters), dtype=torch.float64)
    torch.testing.assert_close(sinkhorn_knopp(scores, epsilon, iters), expected, rtol=1e-10, atol=1e-12)


def test_sinkhorn_marginals():
    scores = cosine_scores(12, 5, seed=3)
    few = sinkhorn_knopp(scores, 0.05, 3)
    torch.testing.assert_close(few.sum(1), torch.ones(12, dtype=torch.float64))  # normalised last: exact
    converged = sinkhorn_knopp(scores, 0.05, 500)
    torch.testing.assert_close(converged.sum(1), torch.ones(12, dtype=torch.float64))
    torch.testing.assert_close(converged.sum(0), torch.full((5,), 12 / 5, dtype=torch.float64))
    assert (converged >= 0).all()


def test_sinkhorn_balances_a_collapsed_batch():
    """Every sample closest to prototype 0: the codes still spread the batch over all prototypes."""
    scores = torch.tensor([[0.9, 0.1, 0.0]] * 6 + [[0.8, 0.2, 0.1]] * 6, dtype=torch.float64)
    codes = sinkhorn_knopp(scores, 0.05, 100)
    torch.testing.assert_close(codes.sum(0), torch.full((3,), 4.0, dtype=torch.float64))
    assert scores.argmax(1).eq(0).all() and codes.argmax(1).unique().numel() > 1


def test_sinkhorn_no_gradient_and_finite_for_large_scores():
    scores = (cosine_scores(8, 4) * 40).requires_grad_()  # exp(40 / 0.05) overflows without the shift
    codes = sinkhorn_knopp(scores.float(), 0.05, 3)
    assert not codes.requires_grad and torch.isfinite(codes).all()
    assert codes.dtype == torch.float32
    torch.testing.assert_close(codes.sum(1), torch.ones(8))


# ---- swav ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch,k,small_crops,use_queue", [(4, 3, 0, False), (5, 4, 2, False), (3, 5, 1, True)])
def test_swav_matches_reference(batch, k, small_crops, use_queue):
    crops = [cosine_scores(batch, k, seed=10 + v).requires_grad_() for v in range(2 + small_crops)]
    queue = (cosine_scores(6, k, seed=50), cosine_scores(6, k, seed=51)) if use_queue else None
    loss = swav(crops[0], crops[1], 0.1, 0.05, 3, small_crop_scores=crops[2:], queue_scores=queue)
    grads = torch.autograd.grad(loss, crops)
    reference = swav_reference(crops, 0.1, 0.05, 3, queue)
    expected = torch.autograd.grad(reference, crops)
    torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-12)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_swav_identical_views_positive_and_bounded_by_code_entropy():
    scores = cosine_scores(6, 4, seed=7)
    loss = swav(scores, scores.clone())
    codes = sinkhorn_knopp(scores, 0.05, 3)
    entropy = -(codes * codes.clamp_min(1e-300).log()).sum(1).mean()
    assert entropy > 0.01
    assert loss >= entropy - 1e-6  # Gibbs: H(q, p) >= H(q)


def test_swav_batch_of_two_and_bf16():
    scores1 = cosine_scores(2, 5, seed=1).bfloat16().requires_grad_()
    scores2 = cosine_scores(2, 5, seed=2).bfloat16().requires_grad_()
    small = cosine_scores(2, 5, seed=3).bfloat16().requires_grad_()
    loss = swav(scores1, scores2, small_crop_scores=[small])
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    for t in (scores1, scores2, small):
        assert t.grad is not None and torch.isfinite(t.grad.float()).all() and t.grad.abs().sum() > 0


# ---- deepcluster_v2 -----------------------------------------------------------------------------------------------------


def test_deepcluster_v2_matches_reference():
    scores = [cosine_scores(6, 4, seed=20).requires_grad_(), cosine_scores(6, 3, seed=21).requires_grad_()]
    assignments = [torch.tensor([0, 3, 1, -1, 2, 2]), torch.tensor([2, 2, 0, 1, -1, -1])]
    loss = deepcluster_v2(scores, assignments, temperature=0.1)
    reference = deepcluster_reference(scores, assignments, 0.1)
    torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-12)
    for got, want in zip(torch.autograd.grad(loss, scores), torch.autograd.grad(reference, scores)):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_deepcluster_v2_without_assignments_is_zero_not_nan():
    scores = cosine_scores(4, 3).requires_grad_()
    loss = deepcluster_v2([scores], [torch.full((4,), -1)])
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(scores.grad, torch.zeros_like(scores))


def test_deepcluster_v2_bf16_batch_of_two():
    scores = cosine_scores(2, 3).bfloat16().requires_grad_()
    loss = deepcluster_v2([scores], [torch.tensor([1, 0])])
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(scores.grad.float()).all()
    with pytest.raises(ValueError, match="one assignment per head"):
        deepcluster_v2([scores, scores], [torch.tensor([1, 0])])
