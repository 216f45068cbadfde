"""LARS, the warm-up + cosine schedule and the linear lr scaling rule."""

import math

import pytest
import torch

from selfsup.config.schedule import warmup_cosine
from selfsup.train.optim import LARS, apply_lr, build_optimizer


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


def solo_learn_lars_steps(weights, grads_per_step, lrs, weight_decay, eta, momentum, exclude_1d=True):
    """solo-learn's LARS (solo/utils/lars.py, clip_lr=True, exclude_bias_n_norm=True), written out per parameter."""
    weights = [w.clone() for w in weights]
    buffers = [None] * len(weights)
    for grads, lr in zip(grads_per_step, lrs):
        for i, (p, g) in enumerate(zip(weights, grads)):
            d_p = g.clone()
            p_norm, g_norm = torch.norm(p), torch.norm(g)
            if p.ndim != 1 or not exclude_1d:
                if p_norm != 0 and g_norm != 0:
                    lars_lr = eta * p_norm / (g_norm + p_norm * weight_decay + 1e-8)
                    lars_lr = min(lars_lr / lr, 1)
                    d_p = (d_p + weight_decay * p) * lars_lr
            buffers[i] = d_p.clone() if buffers[i] is None else buffers[i] * momentum + d_p
            weights[i] = p - lr * buffers[i]
    return weights


def test_clipped_lars_matches_solo_learns_formula_step_by_step():
    torch.manual_seed(0)
    shapes = [(6, 4), (5,), (3, 3), (4, 2)]
    start = [torch.randn(s) for s in shapes]
    start[2] = torch.zeros(3, 3)  # zero weight: no adaptation, no weight decay
    start[3] = start[3] * 50  # large ||w|| / ||g||: the ratio clips at the lr
    grads = [[torch.randn(s) * 0.1 for s in shapes] for _ in range(4)]
    lrs = [0.05, 0.2, 0.4, 0.3]  # a warm-up then decay: the clip is relative to each step's lr
    expected = solo_learn_lars_steps(start, grads, lrs, weight_decay=1e-4, eta=0.02, momentum=0.9)
    params = [torch.nn.Parameter(w.clone()) for w in start]
    groups = [{"params": [params[0], params[2], params[3]]}, {"params": [params[1]], "lars_exclude": True}]
    optimizer = LARS(groups, lr=0.1, momentum=0.9, weight_decay=1e-4, eta=0.02, clip=True)
    optimizer.param_groups[1]["weight_decay"] = 0.0
    for step_grads, lr in zip(grads, lrs):
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
    for got, want in zip(params, expected):
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=1e-7)
    # The unclipped (BYOL) variant on the same steps differs: the clip is not a no-op here.
    params_byol = [torch.nn.Parameter(w.clone()) for w in start]
    byol = LARS([{"params": [params_byol[3]]}], lr=0.1, momentum=0.9, weight_decay=1e-4, eta=0.02)
    for step_grads, lr in zip(grads, lrs):
        params_byol[3].grad = step_grads[3].clone()
        byol.param_groups[0]["lr"] = lr
        byol.step()
    assert not torch.allclose(params_byol[3].detach(), expected[3], rtol=1e-3)


def test_clipped_lars_step_is_the_smaller_of_the_trust_ratio_and_the_lr():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    for grad, lr, expected_scale in [
        (torch.tensor([0.001, 0.0]), 0.1, 0.1),  # eta ||w|| / ||g|| ~ 98 > lr: plain SGD at the lr
        (torch.tensor([100.0, 0.0]), 0.1, 0.02 * 5.0 / (100.0 + 0.01 * 5.0 + 1e-8)),  # ratio < lr: the ratio
    ]:
        w.data = torch.tensor([3.0, 4.0])
        optimizer = LARS([w], lr=lr, momentum=0.0, weight_decay=0.01, eta=0.02, clip=True)
        w.grad = grad.clone()
        optimizer.step()
        step = torch.tensor([3.0, 4.0]) - w.detach()
        torch.testing.assert_close(step, expected_scale * (grad + 0.01 * torch.tensor([3.0, 4.0])))


def test_presets_from_solo_learn_clip_lars_and_the_papers_presets_do_not():
    from selfsup import methods
    from selfsup.config.build import build_config

    for name in ("byol", "mocov3", "barlow_twins", "vicreg", "swav", "deepclusterv2"):
        cfg = build_config(name, methods.preset(name), "cifar")
        assert cfg["optim"]["lars_clip"] is True and cfg["optim"]["lars_eta"] == 0.02, name  # scripts/pretrain/cifar
        imagenet = build_config(name, methods.preset(name), "imagenet")["optim"]
        assert not imagenet.get("lars_clip", False), name
    for name in ("simclr", "supcon"):
        for scale in ("cifar", "imagenet"):
            optim = build_config(name, methods.preset(name), scale)["optim"]
            assert not optim.get("lars_clip", False) and optim["lars_eta"] == 0.001, (name, scale)
    groups = [{"params": [torch.nn.Parameter(torch.ones(2, 2))]}]
    cfg = {"name": "lars", "lr": 0.3, "weight_decay": 1e-6, "momentum": 0.9, "probe_lr": 0.1}
    assert build_optimizer(groups, {**cfg, "lars_clip": True}, 256).param_groups[0]["clip"] is True
    with pytest.raises(ValueError, match="lars_clip"):
        build_optimizer(groups, {**cfg, "lars_clip": "yes"}, 256)


def test_lars_state_saved_before_the_clip_option_still_loads():
    w = torch.nn.Parameter(torch.ones(2, 2))
    optimizer = LARS([w], lr=0.1)
    state = optimizer.state_dict()
    del state["param_groups"][0]["clip"]
    optimizer.load_state_dict(state)
    w.grad = torch.ones(2, 2)
    optimizer.step()
    assert optimizer.param_groups[0]["clip"] is False


def test_adam_applies_weight_decay_as_l2_in_the_gradient():
    a = torch.nn.Parameter(torch.ones(3))
    cfg = {"name": "adam", "lr": 0.1, "scale_lr": False, "weight_decay": 0.5, "momentum": 0.9, "probe_lr": 0.1}
    optimizer = build_optimizer([{"params": [a]}], cfg, 256)
    assert type(optimizer) is torch.optim.Adam and optimizer.param_groups[0]["weight_decay"] == 0.5
    a.grad = torch.zeros(3)
    optimizer.step()  # the L2 gradient 0.5 * w alone: Adam's first step moves each weight by -lr
    torch.testing.assert_close(a.detach(), torch.full((3,), 0.9))


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
