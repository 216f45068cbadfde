"""SwAV, DeepCluster v2, BYOL, SimSiam: their state (EMA, prototypes, queue, k-means memory) and that they learn."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from selfsup.methods import get, preset
from selfsup.methods.base import RunInfo
from selfsup.methods.deepclusterv2 import spherical_kmeans
from selfsup.nn.momentum import cosine_momentum
from selfsup.nn.resnet import resnet18
from selfsup.train.optim import build_optimizer

BATCH, SIDE = 8, 16
TINY_HEADS = {
    "byol": {"proj_hidden_dim": 32, "proj_out_dim": 16, "pred_hidden_dim": 32},
    "simsiam": {"proj_hidden_dim": 32, "proj_out_dim": 16, "pred_hidden_dim": 8},
    "swav": {"proj_hidden_dim": 32, "proj_out_dim": 16, "num_prototypes": 6, "queue_size": 0},
    "deepclusterv2": {"proj_hidden_dim": 32, "proj_out_dim": 16, "num_prototypes": [4, 5]},
}


def build(name: str, steps_per_epoch: int = 2, num_samples: int = 2 * BATCH, **head):
    torch.manual_seed(0)
    encoder = resnet18(width=4, in_channels=3)
    cfg = copy.deepcopy(preset(name)["cifar"])
    cfg["head"].update(TINY_HEADS[name], **head)
    info = RunInfo(encoder.out_dim, num_samples, 0, steps_per_epoch, 3, 3, SIDE)
    return get(name)(encoder, cfg, info)


def fixed_views(count: int = 2, small: int = 0, batch: int = BATCH, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(batch, 3, SIDE, SIDE, generator=g)
    views = [base + 0.3 * torch.randn(base.shape, generator=g) for _ in range(count)]
    return views + [F.avg_pool2d(v, 2) for v in views[:small]]


class Loop:
    """The trainer's order of calls, by hand: forward, backward, on_after_backward, step, on_step_end."""

    def __init__(self, method, lr: float = 0.05):
        self.method, self.step = method, 0
        groups = [g["params"] for g in method.param_groups()]
        self.optimizer = torch.optim.SGD([p for params in groups for p in params], lr=lr, momentum=0.9)

    def __call__(self, views, indices=None, total_steps: int = 100):
        out = self.method(views, None, indices)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.method.on_after_backward(self.step)
        self.optimizer.step()
        self.method.on_step_end(self.step, total_steps)
        self.step += 1
        return out


# ---- every method: forward / backward / hooks, and the loss goes down on a fixed batch ------------------------------


@pytest.mark.parametrize("name", ["byol", "simsiam", "swav", "deepclusterv2"])
def test_loss_decreases_on_a_fixed_batch(name):
    unfrozen = {"freeze_prototypes_epochs": 0} if name == "swav" else {}
    method = build(name, steps_per_epoch=1, num_samples=BATCH, **unfrozen)
    loop = Loop(method)
    views, indices = fixed_views(), torch.arange(BATCH)
    method.on_epoch_start(0)
    first = loop(views, indices)
    method.on_epoch_start(1)  # DeepCluster v2 clusters the memory filled during epoch 0
    losses = [loop(views, indices).loss.item() for _ in range(8)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert first.features.shape == (BATCH, method.encoder.out_dim)
    z1, z2 = first.embeddings
    assert z1.shape == z2.shape and z1.shape[0] == BATCH
    assert losses[-1] < losses[0] - 1e-3, losses


# ---- BYOL and SimSiam: one forward pass per view, so BatchNorm statistics are per view -------------------------


@pytest.mark.parametrize("name", ["byol", "simsiam"])
def test_each_view_is_normalised_with_its_own_batch_statistics(name):
    """deepmind-research byol_experiment.py (apply_once_fn per view) and facebookresearch/simsiam builder.py:
    view 1's representation, projection and prediction do not change when view 2's images do."""
    method = build(name)
    x1, x2 = fixed_views()
    other = fixed_views(seed=7)[1]
    a, b = method([x1, x2]), method([x1, other])
    torch.testing.assert_close(a.features, b.features, rtol=0, atol=0)
    torch.testing.assert_close(a.embeddings[0], b.embeddings[0], rtol=0, atol=0)
    assert not torch.allclose(a.embeddings[1], b.embeddings[1])


def test_byol_loss_is_the_symmetric_regression_of_per_view_predictions_on_per_view_targets():
    method = build("byol")
    x1, x2 = fixed_views()
    loss = method([x1, x2]).loss
    with torch.no_grad():
        p1, p2 = (method.predictor(method.projector(method.encoder(x))) for x in (x1, x2))
        t1, t2 = (method.target_projector(method.target_encoder(x)) for x in (x1, x2))

    def regression(p, t):  # byol/utils/helpers.py regression_loss: ||p/|p| - t/|t|||^2, mean over the batch
        return (F.normalize(p, dim=1) - F.normalize(t, dim=1)).pow(2).sum(1).mean()

    torch.testing.assert_close(loss.detach(), regression(p1, t2) + regression(p2, t1), rtol=1e-5, atol=1e-6)


# ---- BYOL: EMA arithmetic and the cosine schedule -------------------------------------------------------------------


def test_byol_cosine_schedule_endpoints():
    assert cosine_momentum(0.996, 1.0, 0, 1000) == pytest.approx(0.996)
    assert cosine_momentum(0.996, 1.0, 500, 1000) == pytest.approx(0.998)
    assert cosine_momentum(0.996, 1.0, 1000, 1000) == pytest.approx(1.0)


def test_byol_target_is_the_ema_of_the_online_network():
    method = build("byol")
    loop = Loop(method, lr=0.5)
    for _ in range(2):
        loop(fixed_views())
    before = [p.clone() for p in method.target_encoder.parameters()]
    out = method(fixed_views(seed=3))
    out.loss.backward()
    assert all(p.grad is None for p in method.target_encoder.parameters())
    assert all(p.grad is None for p in method.target_projector.parameters())
    loop.optimizer.step()
    step, total = 60, 100
    method.on_step_end(step, total)
    tau = cosine_momentum(0.99, 1.0, step, total)
    assert method.momentum == pytest.approx(tau)
    moved = 0
    for old, new, online in zip(before, method.target_encoder.parameters(), method.encoder.parameters()):
        torch.testing.assert_close(new, tau * old + (1 - tau) * online.detach())
        moved += int(not torch.equal(new, old))
    assert moved > 0
    frozen = [p.clone() for p in method.target_projector.parameters()]
    method.on_step_end(total, total)  # tau = 1 at the end: the target no longer moves
    assert all(torch.equal(a, b) for a, b in zip(frozen, method.target_projector.parameters()))


# ---- SimSiam: stop-gradient and the predictor's fixed learning rate ------------------------------------------------


def test_simsiam_predictor_group_has_fixed_lr_and_every_parameter_once():
    method = build("simsiam")
    groups = method.param_groups()
    predictor = [g for g in groups if g.get("name") == "predictor"]
    assert len(predictor) == 1 and predictor[0]["fixed_lr"] is True
    assert predictor[0]["lr"] == pytest.approx(0.03 * 512 / 256)  # the CIFAR preset's initial lr, kept
    assert {id(p) for p in predictor[0]["params"]} == {id(p) for p in method.predictor.parameters()}
    listed = [id(p) for g in groups for p in g["params"]]
    assert len(listed) == len(set(listed)) == sum(1 for p in method.parameters() if p.requires_grad)
    assert not any(g.get("fixed_lr") for g in groups if g.get("name") != "predictor")


# ---- SwAV: normalised prototypes, first-epoch freeze, queue ---------------------------------------------------------


def test_swav_prototypes_frozen_first_epoch_then_trained_and_normalised():
    method = build("swav", steps_per_epoch=2, freeze_prototypes_epochs=1)
    loop = Loop(method, lr=0.5)
    start = method.prototypes.weight.detach().clone()
    torch.testing.assert_close(start.norm(dim=1), torch.ones(6))
    for _ in range(2):
        loop(fixed_views())
        torch.testing.assert_close(method.prototypes.weight, start)
    loop(fixed_views())
    after = method.prototypes.weight.detach()
    assert not torch.allclose(after, start)
    torch.testing.assert_close(after.norm(dim=1), torch.ones(6))


def test_swav_multi_crop_forward_backward():
    method = build("swav")
    views = fixed_views(count=2, small=2)
    assert views[2].shape[-1] == SIDE // 2
    out = Loop(method)(views)
    assert torch.isfinite(out.loss) and out.loss > 0


def test_swav_queue_fifo_starts_at_its_epoch_and_joins_sinkhorn_when_full():
    batch = 4
    method = build("swav", queue_size=8, queue_start_epoch=1, freeze_prototypes_epochs=0)
    loop = Loop(method, lr=0.0)  # lr 0: the network is fixed, so queue entries are reproducible
    method.on_epoch_start(0)
    loop(fixed_views(batch=batch))
    assert method.queue.abs().sum() == 0 and int(method.queue_filled) == 0
    method.on_epoch_start(1)
    outs = [loop(fixed_views(batch=batch, seed=s)) for s in (10, 11)]
    assert [o.metrics["queue_used"] for o in outs] == [0.0, 0.0]
    for crop in (0, 1):
        torch.testing.assert_close(method.queue[crop, :batch], outs[1].embeddings[crop])  # newest first
        torch.testing.assert_close(method.queue[crop, batch:], outs[0].embeddings[crop])
    third = loop(fixed_views(batch=batch, seed=12))
    assert third.metrics["queue_used"] == 1.0
    torch.testing.assert_close(method.queue[0, batch:], outs[1].embeddings[0])  # the oldest batch dropped


# ---- DeepCluster v2: memory, k-means, prototypes from centroids -----------------------------------------------------


def test_spherical_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(8)[:3]
    x = F.normalize(centres.repeat_interleave(20, 0) + 0.05 * torch.randn(60, 8, generator=g), dim=1)
    centroids, assignments = spherical_kmeans(x, 3, 10, torch.Generator().manual_seed(1))
    truth = torch.arange(3).repeat_interleave(20)
    for c in range(3):
        assert assignments[truth == c].unique().numel() == 1
    assert assignments.unique().numel() == 3
    torch.testing.assert_close(centroids.norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="num_prototypes"):
        spherical_kmeans(x[:2], 3, 10, torch.Generator())


def test_deepclusterv2_memory_assignments_and_prototypes_agree():
    method = build("deepclusterv2", steps_per_epoch=2, num_samples=2 * BATCH)
    loop = Loop(method)
    method.on_epoch_start(0)  # empty memory: nothing to cluster yet
    assert (method.assignments == -1).all()
    first = [loop(fixed_views(seed=s), torch.arange(i * BATCH, (i + 1) * BATCH)) for i, s in enumerate((1, 2))]
    assert all(o.loss.item() == 0.0 for o in first)
    assert method.seen.all()
    torch.testing.assert_close(method.memory[1, :BATCH], first[0].embeddings[1])
    method.on_epoch_start(1)
    for h, prototypes in enumerate(method.heads):
        assert not prototypes.weight.requires_grad
        torch.testing.assert_close(prototypes.weight.norm(dim=1), torch.ones(prototypes.weight.shape[0]))
        nearest = (method.memory[h % 2] @ prototypes.weight.T).argmax(dim=1)
        assert torch.equal(method.assignments[h], nearest)
    assert loop(fixed_views(seed=1), torch.arange(BATCH)).loss > 0
    with pytest.raises(ValueError, match="indices"):
        method(fixed_views())


def test_deepclusterv2_memory_filling_epoch_leaves_the_network_untouched():
    """Epoch 0 only fills the memory (the paper's forward-only pass): its zero loss must not reach the optimizer.

    With the preset's LARS and weight decay, a zero loss still moves every weight: the trust ratio turns the
    decay-only gradient into a shrink by lr x eta per step, which scaled the network by ~1e-5 in one CIFAR
    epoch and collapsed it.
    """
    method = build("deepclusterv2", steps_per_epoch=2, num_samples=2 * BATCH)
    optimizer = build_optimizer(method.param_groups(), {**method.cfg["optim"], "momentum": 0.9}, 256)
    batches = [(fixed_views(seed=s), torch.arange(i * BATCH, (i + 1) * BATCH)) for i, s in enumerate((1, 2))]

    def step(views, indices):
        out = method(views, None, indices)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        method.on_after_backward(0)
        optimizer.step()
        method.on_step_end(0, 10)
        return out

    initial = copy.deepcopy(dict(method.named_parameters()))
    method.on_epoch_start(0)
    assert all(step(*batch).loss.item() == 0.0 for batch in batches + batches)
    for name, parameter in method.named_parameters():
        assert torch.equal(parameter, initial[name]), name
    method.on_epoch_start(1)
    assert step(*batches[0]).loss > 0
    assert not torch.equal(method.projector[0].weight, initial["projector.0.weight"])
    method.on_epoch_start(2)  # only the first batch was seen in epoch 1: the memory holds one epoch, as in the paper
    assert (method.assignments[:, :BATCH] >= 0).all() and (method.assignments[:, BATCH:] == -1).all()


def test_deepclusterv2_refuses_more_prototypes_than_samples():
    with pytest.raises(ValueError, match="num_prototypes"):
        build("deepclusterv2", num_samples=4)
