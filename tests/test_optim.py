"""LARS, the warm-up + cosine schedule and the linear lr scaling rule."""

import math

import pytest
import torch

from selfsup.train.optim import LARS, build_optimizer
from selfsup.train.schedule import apply_lr, warmup_cosine


def test_lars_step_matches_formula_and_excludes_group():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w]}, {"params": [b], "lars_exclude": True}], lr=0.1, momentum=0.9, weight_decay=0.01, eta=0.02)
    w.grad = torch.tensor([0.5, 0.0])
    b.grad = torch.tensor([2.0])
    opt.step()
    g = torch.tensor([0.5, 0.0]) + 0.01 * torch.tensor([3.0, 4.0])
    ratio = 0.02 * 5.0 / g.norm()
    assert torch.allclose(w.detach(), torch.tensor([3.0, 4.0]) - 0.1 * ratio * g)
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 0.1 * 2.0]))  # plain SGD, no decay, no ratio
    w.grad = torch.tensor([0.5, 0.0])
    b.grad = torch.tensor([2.0])
    opt.step()
    assert torch.allclose(b.detach(), torch.tensor([0.8 - 0.1 * (0.9 * 2.0 + 2.0)]))  # momentum buffer


def test_lars_zero_weight_uses_unit_ratio():
    w = torch.nn.Parameter(torch.zeros(3))
    opt = LARS([w], lr=1.0, momentum=0.0)
    w.grad = torch.ones(3)
    opt.step()
    assert torch.allclose(w.detach(), -torch.ones(3))


def test_schedule_warmup_then_cosine():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10, min_ratio=0.1) == pytest.approx(0.1)
    values = [warmup_cosine(s, 100, 10) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_linear_scaling_fixed_lr_and_probe_groups():
    a, b, c = (torch.nn.Parameter(torch.ones(2, 2)) for _ in range(3))
    cfg = {"name": "sgd", "lr": 0.3, "scale_lr": True, "weight_decay": 1e-6, "momentum": 0.9, "probe_lr": 0.1}
    opt = build_optimizer(
        [{"params": [a]}, {"params": [b], "fixed_lr": True, "lr": 0.05}, {"params": [c], "name": "probe"}], cfg, 512
    )
    assert opt.param_groups[0]["base_lr"] == pytest.approx(0.6)
    assert opt.param_groups[1]["base_lr"] == pytest.approx(0.05)
    assert opt.param_groups[2]["base_lr"] == pytest.approx(0.1)
    apply_lr(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.3, 0.05, 0.05])
    with pytest.raises(ValueError, match="optim.name"):
        build_optimizer([{"params": [a]}], {**cfg, "name": "adagrad"}, 256)
    assert math.isclose(build_optimizer([{"params": [a]}], {**cfg, "scale_lr": False}, 4096).param_groups[0]["lr"], 0.3)
