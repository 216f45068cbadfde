"""negative_cosine against a literal reference, its stop-gradient, BYOL's 2 - 2cos form and edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.losses import negative_cosine


def negative_cosine_reference(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """-1/N sum_i <p_i, z_i> / (|p_i| |z_i|), z a constant (stop-gradient), element by element."""
    target = z.detach().tolist()
    total = 0
    for i in range(len(p)):
        dot = sum(p[i][j] * target[i][j] for j in range(len(p[i])))
        norm_p = sum(p[i][j] ** 2 for j in range(len(p[i]))).sqrt()
        norm_z = math.sqrt(sum(target[i][j] ** 2 for j in range(len(target[i]))))
        total = total - dot / (norm_p * norm_z)
    return total / len(p)


@pytest.mark.parametrize("n,d", [(2, 3), (5, 8), (7, 1)])
def test_matches_reference_values_and_gradients(n, d):
    g = torch.Generator().manual_seed(n * d)
    p = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    loss = negative_cosine(p, z)
    reference = negative_cosine_reference(p, z)
    torch.testing.assert_close(loss, reference, rtol=1e-12, atol=1e-12)
    grad_p, grad_z = torch.autograd.grad(loss, (p, z), allow_unused=True)
    torch.testing.assert_close(grad_p, torch.autograd.grad(reference, p)[0], rtol=1e-10, atol=1e-12)
    assert grad_z is None  # stop-gradient: nothing flows to the target


def test_byol_form_is_the_normalised_squared_distance():
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    distance = (p / p.norm(dim=1, keepdim=True) - z / z.norm(dim=1, keepdim=True)).pow(2).sum(1).mean()
    torch.testing.assert_close(2 + 2 * negative_cosine(p, z), distance)


def test_identical_opposite_orthogonal_and_zero_vectors():
    x = torch.tensor([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]])
    assert negative_cosine(x, x).item() == pytest.approx(-1.0)
    assert negative_cosine(x, 3 * x).item() == pytest.approx(-1.0)  # scale invariant
    assert negative_cosine(x, -x).item() == pytest.approx(1.0)
    assert negative_cosine(torch.eye(2), torch.eye(2).flip(0)).item() == pytest.approx(0.0)
    zeros = torch.zeros(2, 3, requires_grad=True)
    loss = negative_cosine(zeros, x)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(zeros.grad).all()


def test_bf16_inputs_give_finite_float32_loss_and_gradients():
    p = torch.randn(2, 16).bfloat16().requires_grad_()
    z = torch.randn(2, 16).bfloat16()
    loss = negative_cosine(p, z)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(p.grad.float()).all() and p.grad.abs().sum() > 0
