"""InstDisc, MoCo v1/v2, SupCon and AdCo: their state updates, and that each one learns."""

from __future__ import annotations

import copy
import datetime
import json
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from selfsup import methods
from selfsup.config.build import build_config
from selfsup.losses import info_nce
from selfsup.methods.base import RunInfo
from selfsup.methods.moco import shuffle_across_ranks, unshuffle_across_ranks
from selfsup.nn.memory import MemoryBank, Queue
from selfsup.nn.resnet import resnet18
from selfsup.nn.split_bn import SplitBatchNorm, convert_to_split_batchnorm
from selfsup.train.optim import build_optimizer
from tests.helpers import learns_on_digits

POOL, BATCH, SIDE = 64, 16, 16

# Small heads and memories so that a step takes milliseconds; queue/negatives smaller than the
# pool minus a batch so that they never hold the current images' own keys.
# Two batch-norm groups of 8 (the presets' 8 groups would leave 2 samples per group in a batch of 16).
TINY_HEADS = {
    "moco": {"proj_hidden_dim": 32, "proj_out_dim": 16, "queue_size": 32, "bn_splits": 2},
    "mocov1": {"proj_out_dim": 16, "queue_size": 32, "bn_splits": 2},
    "instdisc": {"proj_out_dim": 16, "noise_samples": 32},
    "supcon": {"proj_hidden_dim": 32, "proj_out_dim": 16},
    "adco": {"proj_hidden_dim": 32, "proj_out_dim": 16, "num_negatives": 32, "bn_splits": 2},
}
CONTRASTIVE = sorted(TINY_HEADS)



def tiny(name: str, **head) -> methods.Method:
    torch.manual_seed(0)
    overrides = {"head": {**TINY_HEADS[name], **head}, "train": {"batch_size": BATCH}}
    cfg = build_config(name, methods.preset(name), "cifar", overrides)
    encoder = resnet18(width=4, stem="cifar", in_channels=3)
    info = RunInfo(
        feature_dim=encoder.out_dim, num_samples=POOL, num_classes=0, steps_per_epoch=POOL // BATCH,
        epochs=1, channels=3, input_size=SIDE,
    )
    return methods.get(name)(encoder, cfg, info)


def pool() -> tuple[list[torch.Tensor], torch.Tensor]:
    """Two fixed 'views' of POOL random images (the second a noisy copy) and 4 labels."""
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(POOL, 3, SIDE, SIDE, generator=generator)
    noisy = x + 0.1 * torch.randn(x.shape, generator=generator)
    return [x, noisy], torch.arange(POOL) % 4


def train_step(method, optimizer, views, labels, indices, step):
    out = method(views, labels=labels, indices=indices)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    method.on_after_backward(step)
    optimizer.step()
    method.on_step_end(step, 100)
    return out


@pytest.mark.parametrize("name", CONTRASTIVE)
def test_forward_backward_and_loss_decreases_over_a_few_epochs_of_a_fixed_pool(name):
    method = tiny(name)
    optimizer = build_optimizer(method.param_groups(), method.cfg["optim"], BATCH)
    views, labels = pool()
    epoch_losses = []
    step = 0
    for _ in range(5):
        total = 0.0
        for start in range(0, POOL, BATCH):
            idx = torch.arange(start, start + BATCH)
            out = train_step(method, optimizer, [v[idx] for v in views], labels[idx], idx, step)
            step += 1
            total += out.loss.item()
            assert out.features.shape == (BATCH, method.info.feature_dim)
            assert out.embeddings[0].shape == out.embeddings[1].shape == (BATCH, 16)
            assert all(p.grad is None or torch.isfinite(p.grad).all() for p in method.parameters())
        epoch_losses.append(total)
    # Epoch 0 is measured against the initial memory (random queue, AdCo's negatives being filled
    # with keys), which is easier than the real keys that replace it; learning shows from epoch 1 on.
    assert epoch_losses[-1] < epoch_losses[1], epoch_losses


@pytest.mark.parametrize("name", CONTRASTIVE)
def test_a_bf16_autocast_step_is_finite_and_keeps_the_memories_in_float32(name):
    method = tiny(name)
    optimizer = torch.optim.SGD(method.param_groups(), lr=0.1)
    views, labels = pool()
    idx = torch.arange(BATCH)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method([v[idx] for v in views], labels=labels[idx], indices=idx)
    assert torch.isfinite(out.loss)
    optimizer.zero_grad()
    out.loss.backward()
    method.on_after_backward(0)
    optimizer.step()
    method.on_step_end(0, 10)
    assert all(torch.isfinite(p).all() for p in method.parameters())
    assert all(b.dtype in (torch.float32, torch.long) for b in method.buffers())
    assert all(p.dtype == torch.float32 for p in method.parameters())


@pytest.mark.parametrize("name", ["moco", "mocov1", "adco"])
def test_key_encoder_is_the_ema_of_the_query_encoder(name):
    method = tiny(name)
    optimizer = torch.optim.SGD(method.param_groups(), lr=0.5)
    views, labels = pool()
    keys_before = copy.deepcopy(method.key_encoder)
    idx = torch.arange(BATCH)
    train_step(method, optimizer, [v[idx] for v in views], labels[idx], idx, 0)
    m = method.momentum
    moved = 0
    for k_before, k_after, q in zip(keys_before.parameters(), method.key_encoder.parameters(), method.encoder.parameters()):
        assert torch.allclose(k_after, m * k_before + (1 - m) * q, atol=1e-6)
        moved += int(not torch.equal(k_after, k_before))
    assert moved > 0
    assert not any(p.requires_grad for p in method.key_encoder.parameters())


def test_moco_enqueues_the_batch_keys_after_the_step():
    method = tiny("moco")
    optimizer = torch.optim.SGD(method.param_groups(), lr=0.1)
    views, labels = pool()
    queue_before = method.queue.items.clone()
    idx = torch.arange(BATCH)
    out = train_step(method, optimizer, [v[idx] for v in views], labels[idx], idx, 0)
    keys = out.embeddings[1]
    assert not keys.requires_grad
    assert torch.equal(method.queue.items[:BATCH], keys)
    assert torch.equal(method.queue.items[BATCH:], queue_before[BATCH:])
    assert int(method.queue.pointer) == BATCH


def test_moco_loss_uses_the_queue_as_negatives():
    method = tiny("mocov1")
    views, _ = pool()
    with torch.no_grad():
        out = method([v[:BATCH] for v in views])
        q, k = out.embeddings
        expected = info_nce(q, k, negatives=method.queue.items, temperature=method.cfg["loss"]["temperature"])
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_shuffle_and_unshuffle_round_trip_is_exact():
    torch.manual_seed(0)
    x = torch.randn(32, 5)
    shuffled, permutation = shuffle_across_ranks(x)
    assert not torch.equal(shuffled, x)
    assert torch.equal(shuffled, x[permutation])
    assert torch.equal(unshuffle_across_ranks(shuffled, permutation), x)
    # A row-wise function commutes with the shuffle: what the key encoder computes comes back in order.
    assert torch.equal(unshuffle_across_ranks(shuffled * 2 + 1, permutation), x * 2 + 1)


def test_instdisc_updates_its_bank_at_the_batch_indices_with_momentum():
    method = tiny("instdisc")
    optimizer = torch.optim.SGD(method.param_groups(), lr=0.1)
    views, labels = pool()
    bank_before = method.bank.vectors.clone()
    idx = torch.tensor([5, 9, 17, 33, 40, 41, 42, 50, 51, 52, 53, 54, 60, 61, 62, 63])
    out = train_step(method, optimizer, [v[idx] for v in views], labels[idx], idx, 0)
    v = out.embeddings[0].detach()
    m = method.cfg["head"]["bank_momentum"]
    assert torch.allclose(method.bank.vectors[idx], F.normalize(m * bank_before[idx] + (1 - m) * v, dim=1), atol=1e-6)
    others = torch.ones(POOL, dtype=torch.bool)
    others[idx] = False
    assert torch.equal(method.bank.vectors[others], bank_before[others])
    assert torch.equal(out.embeddings[1], bank_before[idx])  # the bank entry is the image's other view


def test_instdisc_estimates_the_partition_function_from_each_steps_noise():
    method = tiny("instdisc")
    views, _ = pool()
    idx = torch.arange(BATCH)
    t = method.cfg["loss"]["temperature"]
    for start in (0, BATCH):
        torch.manual_seed(start)
        noise = method.bank[method.bank.sample_indices(method.noise_samples)]
        torch.manual_seed(start)
        out = method([v[idx + start] for v in views], indices=idx + start)
        v = out.embeddings[0].detach()
        expected = torch.log(POOL * torch.exp(v @ noise.T / t).mean())  # Z = N E_j[exp(v_j . v / t)]
        assert method.log_partition.item() == pytest.approx(expected.item(), rel=1e-5)
        method.bank.update(idx + start, torch.ones_like(v), momentum=0.0)  # a bank far from uniform: Z must follow


def test_instdisc_without_noise_samples_is_the_exact_softmax_over_the_bank():
    """noise_samples 0 (the authors' --nce-k 0): L = -mean_i log exp(v_i . v / t) / sum_j exp(v_j . v / t), all N entries."""
    method = tiny("instdisc", noise_samples=0)
    views, _ = pool()
    idx = torch.arange(BATCH) + 3
    bank = method.bank.vectors.clone()
    out = method([v[idx] for v in views], indices=idx)
    v = out.embeddings[0].detach().double()
    t = method.cfg["loss"]["temperature"]
    scores = torch.exp(v @ bank.double().T / t)
    expected = -torch.log(scores[torch.arange(BATCH), idx] / scores.sum(1)).mean()
    assert out.metrics["nce"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)  # no proximal term by default
    out.loss.backward()
    assert method.projector.weight.grad.abs().sum() > 0


def test_instdisc_can_freeze_the_partition_function_at_its_first_batch_value():
    method = tiny("instdisc", partition_estimate="first_batch")
    views, _ = pool()
    idx = torch.arange(BATCH)
    method([v[idx] for v in views], indices=idx)
    first = method.log_partition.clone()
    # Z ~ N E[exp(v.n / t)]: with unit vectors |v.n| <= 1, so log Z lies within log N +- 1/t.
    t = method.cfg["loss"]["temperature"]
    assert abs(first.item() - torch.log(torch.tensor(float(POOL))).item()) <= 1 / t
    method([v[idx + BATCH] for v in views], indices=idx + BATCH)
    assert torch.equal(method.log_partition, first)


def test_instdisc_presets_are_what_the_authors_ran_and_the_proximal_term_is_an_option():
    """lemniscate.pytorch cifar.py: lr 0.03 at batch 128, no proximal term; main.py: lr 0.03 at batch 256."""
    for scale, lr, batch in (("cifar", 0.03, 128), ("imagenet", 0.03, 256)):
        cfg = build_config("instdisc", methods.preset("instdisc"), scale)
        assert cfg["train"]["batch_size"] == batch and cfg["head"]["proximal_weight"] == 0.0
        assert cfg["optim"]["lr"] * batch / 256 == pytest.approx(lr) and cfg["optim"]["scale_lr"]
    views, _ = pool()
    idx = torch.arange(BATCH)
    losses = {}
    for weight in (0.0, 50.0):
        method = tiny("instdisc", proximal_weight=weight)
        method.bank.update(idx, torch.randn(BATCH, 16), momentum=0.0)  # bank entries away from the embeddings
        torch.manual_seed(0)
        out = method([views[0][idx]], indices=idx)
        v, previous = out.embeddings
        proximal = ((v.detach() - previous) ** 2).sum(1).mean()
        losses[weight] = (out.loss.item(), out.metrics["nce"].item(), proximal.item())
    assert losses[0.0][0] == pytest.approx(losses[0.0][1])  # the default: the NCE loss alone
    nce, proximal = losses[50.0][1], losses[50.0][2]
    assert proximal > 0.1 and losses[50.0][0] == pytest.approx(nce + 50.0 * proximal, rel=1e-5)


def test_simclr_projector_is_the_authors_projection_head():
    """google-research/simclr model_util.py projection_head: Linear layers as wide as the features, BN after each
    (the hidden ones with scale and centre, then ReLU; the output one with a scale but no centre), no biases."""
    names = {torch.nn.Linear: "Linear", torch.nn.ReLU: "ReLU"}

    def layout(projector):
        out = []
        for m in projector:
            if isinstance(m, torch.nn.BatchNorm1d):
                out.append("BN-affine" if m.affine else "BN")
            else:
                out.append(names.get(type(m), type(m).__name__) + ("+bias" if getattr(m, "bias", None) is not None else ""))
        return out

    hidden, output = ["Linear", "BN-affine", "ReLU"], ["Linear", "BN", "ChannelScale"]
    encoder = resnet18(width=4, stem="cifar", in_channels=3)
    info = RunInfo(encoder.out_dim, POOL, 0, POOL // BATCH, 1, 3, SIDE)
    for scale, layers in (("cifar", 3), ("imagenet", 2)):  # current repo's CIFAR command; the v1 release
        cfg = build_config("simclr", methods.preset("simclr"), scale, {"train": {"batch_size": BATCH}})
        method = methods.get("simclr")(encoder, cfg, info)
        assert layout(method.projector) == hidden * (layers - 1) + output, scale
        assert [m.out_features for m in method.projector if isinstance(m, torch.nn.Linear)] == (
            [encoder.out_dim] * (layers - 1) + [128]
        )
    gamma = method.projector[-1].weight
    assert gamma.requires_grad and gamma.shape == (128,)
    assert any(gamma is p for g in method.param_groups() if g.get("lars_exclude") for p in g["params"])
    views, _ = pool()
    out = method([views[0][:BATCH], views[1][:BATCH]])
    out.loss.backward()
    assert torch.isfinite(out.loss) and gamma.grad is not None and gamma.grad.abs().sum() > 0


def test_instdisc_and_supcon_say_what_they_need():
    views, _ = pool()
    with pytest.raises(ValueError, match="indices"):
        tiny("instdisc")([v[:BATCH] for v in views])
    with pytest.raises(ValueError, match="labels"):
        tiny("supcon")([v[:BATCH] for v in views])
    assert methods.get("supcon").needs_labels


def test_supcon_pulls_together_images_of_the_same_label():
    method = tiny("supcon")
    views, labels = pool()
    batch = [v[:BATCH] for v in views]
    with torch.no_grad():
        with_labels = method(batch, labels=labels[:BATCH]).loss
        own_class = method(batch, labels=torch.arange(BATCH)).loss
    # Same embeddings, more positives per anchor: a different (harder to satisfy) objective.
    assert not torch.isclose(with_labels, own_class)


def test_adco_negatives_have_their_own_constant_lr_and_no_lars():
    method = tiny("adco")
    groups = method.param_groups()
    negatives = [g for g in groups if g["name"] == "negatives"]
    assert len(negatives) == 1 and negatives[0]["params"] == [method.negatives]
    assert negatives[0]["lr"] == method.cfg["head"]["negatives_lr"]
    assert negatives[0]["fixed_lr"] and negatives[0]["lars_exclude"]
    assert sum(any(p is method.negatives for p in g["params"]) for g in groups) == 1
    optimizer = build_optimizer(groups, method.cfg["optim"], batch_size=1024)
    (group,) = [g for g in optimizer.param_groups if g["name"] == "negatives"]
    assert group["lr"] == method.cfg["head"]["negatives_lr"]  # not scaled with the batch size


def train_on_the_first_two_batches(method, optimizer) -> list:
    """One step on each of the pool's first two batches (enough to fill AdCo's 32 negatives); their outputs."""
    views, labels = pool()
    outputs = []
    for step, start in enumerate((0, BATCH)):
        idx = torch.arange(start, start + BATCH)
        outputs.append(train_step(method, optimizer, [v[idx] for v in views], labels[idx], idx, step))
    return outputs


def test_adco_starts_its_negatives_from_the_first_keys():
    method = tiny("adco")
    optimizer = torch.optim.SGD(method.param_groups(), lr=0.1)
    for start, out in zip((0, BATCH), train_on_the_first_two_batches(method, optimizer)):
        assert torch.equal(method.negatives.detach()[start : start + BATCH], out.embeddings[1])
    assert int(method.filled) == 32 and not method._filling


def test_adco_resumed_from_a_checkpoint_knows_its_negatives_are_filled():
    method = tiny("adco")
    train_on_the_first_two_batches(method, torch.optim.SGD(method.param_groups(), lr=0.1))
    resumed = tiny("adco")
    assert resumed._filling
    resumed.load_state_dict(method.state_dict())
    assert not resumed._filling and torch.equal(resumed.negatives, method.negatives)


def test_adco_step_moves_negatives_up_the_loss_and_the_encoder_down():
    method = tiny("adco", negatives_lr=0.5)
    views, _ = pool()
    train_on_the_first_two_batches(method, torch.optim.SGD(method.param_groups(), lr=0.0))  # fill; lr 0: no training
    optimizer = torch.optim.SGD(method.param_groups(), lr=0.05)
    t_pos, t_neg = method.cfg["loss"]["t_pos"], method.cfg["loss"]["t_neg"]
    batch = [v[2 * BATCH : 3 * BATCH] for v in views]
    negatives_before = method.negatives.detach().clone()
    out = method(batch)
    q_before, k = (e.detach() for e in out.embeddings)
    optimizer.zero_grad()
    out.loss.backward()
    method.on_after_backward(2)
    optimizer.step()
    negatives_after = method.negatives.detach()
    assert not torch.equal(negatives_after, negatives_before)
    # The negatives' objective L(t_neg) at the same queries and keys went up ...
    adversary_before = info_nce(q_before, k, negatives_before, temperature=t_neg)
    adversary_after = info_nce(q_before, k, negatives_after, temperature=t_neg)
    assert adversary_after > adversary_before
    # ... while the encoder's L(t_pos) against the same negatives went down.
    with torch.no_grad():
        q_after = method(batch).embeddings[0]
    assert info_nce(q_after, k, negatives_before, temperature=t_pos) < info_nce(q_before, k, negatives_before, temperature=t_pos)


def _two_rank_worker(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    torch.manual_seed(rank)  # different local RNG on each rank, as in a real run
    x = torch.arange(8 * 3, dtype=torch.float32).view(8, 3)[rank * 4 : (rank + 1) * 4]
    shuffled, permutation = shuffle_across_ranks(x)
    restored = unshuffle_across_ranks(shuffled * 2 + 1, permutation)
    queue = Queue(size=6, dim=3, random_init=False)
    queue.enqueue(x[:2])
    bank = MemoryBank(num_samples=8, dim=3)
    bank.update(torch.tensor([rank, 4 + rank]), x[:2], momentum=0.0)
    torch.save(
        {"x": x, "shuffled": shuffled, "permutation": permutation, "restored": restored,
         "queue": queue.oldest_first(), "bank": bank.vectors},
        Path(folder) / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


def run_two_ranks(worker, folder) -> None:
    """``worker(rank, port, folder)`` in two forked gloo processes (forking keeps the imported modules;
    spawning re-imports torch, seconds per process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(worker, args=(port, str(folder)), nprocs=2, join=True, start_method="fork")


def test_shuffled_batch_norm_and_memories_across_two_gloo_processes(tmp_path):
    run_two_ranks(_two_rank_worker, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    everyone = torch.cat([r0["x"], r1["x"]])
    assert torch.equal(r0["permutation"], r1["permutation"])  # one permutation, broadcast from rank 0
    permuted = everyone[r0["permutation"]]
    assert torch.equal(torch.cat([r0["shuffled"], r1["shuffled"]]), permuted)
    assert torch.equal(r0["restored"], r0["x"] * 2 + 1) and torch.equal(r1["restored"], r1["x"] * 2 + 1)
    # Both ranks enqueue the same gathered keys and write the same bank rows.
    assert torch.equal(r0["queue"], torch.cat([r0["x"][:2], r1["x"][:2]])) and torch.equal(r0["queue"], r1["queue"])
    written = [0, 4, 1, 5]  # rank 0 wrote rows 0 and 4, rank 1 rows 1 and 5; every rank holds all four
    expected = F.normalize(torch.cat([r0["x"][:2], r1["x"][:2]]), dim=1)
    assert torch.allclose(r0["bank"][written], expected) and torch.allclose(r1["bank"][written], expected)


# ---- shuffling BN in one process: split BatchNorm as in the authors' CIFAR-10 demo ---------------------------------


def test_split_batchnorm_normalises_each_block_with_its_own_statistics_and_averages_the_running_ones():
    torch.manual_seed(0)
    x = torch.randn(12, 3, 4, 4) * 2 + 1
    layer = SplitBatchNorm(3, num_splits=3, momentum=0.1)
    layer.weight.data, layer.bias.data = torch.rand(3), torch.randn(3)
    y = layer(x)
    blocks = x.chunk(3)  # group g: the g-th contiguous block of B/S samples, as rank g under DDP
    expected = torch.cat([F.batch_norm(b, None, None, layer.weight, layer.bias, True, 0.0, layer.eps) for b in blocks])
    torch.testing.assert_close(y, expected)
    # The authors' SplitBatchNorm: each block updates a copy of the running buffers, the copies are averaged.
    means = torch.stack([b.mean((0, 2, 3)) for b in blocks])
    variances = torch.stack([b.var((0, 2, 3), correction=1) for b in blocks])
    torch.testing.assert_close(layer.running_mean, 0.9 * torch.zeros(3) + 0.1 * means.mean(0))
    torch.testing.assert_close(layer.running_var, 0.9 * torch.ones(3) + 0.1 * variances.mean(0))
    layer.eval()  # evaluation: the running statistics, as plain BatchNorm
    torch.testing.assert_close(
        layer(x), F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, layer.eps)
    )
    with pytest.raises(ValueError, match="multiple of 3"):
        layer.train()(x[:10])


def _unsplit_copy(module: torch.nn.Module) -> torch.nn.Module:
    copied = copy.deepcopy(module)
    for m in copied.modules():
        if isinstance(m, SplitBatchNorm):
            m.num_splits = 1
    return copied


def _splits(method) -> set[int]:
    layers = [m for enc in (method.encoder, method.key_encoder) for m in enc.modules()
              if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert layers
    return {m.num_splits if isinstance(m, SplitBatchNorm) else 1 for m in layers}


@pytest.mark.parametrize("name", ["moco", "mocov1", "adco"])
def test_one_process_splits_the_batch_norm_of_both_encoders_as_the_presets_say(name):
    assert methods.preset(name)["cifar"]["head"]["bn_splits"] == 8  # the demo's --bn-splits 8
    assert _splits(tiny(name, bn_splits=8)) == {8}
    assert _splits(tiny(name, bn_splits=1)) == {1}
    torch.manual_seed(0)
    cfg = build_config(name, methods.preset(name), "cifar", {"head": TINY_HEADS[name], "train": {"batch_size": BATCH}},
                       ["train.sync_batchnorm=true"])
    encoder = resnet18(width=4, stem="cifar", in_channels=3)
    info = RunInfo(encoder.out_dim, POOL, 0, POOL // BATCH, 1, 3, SIDE)
    assert _splits(methods.get(name)(encoder, cfg, info)) == {1}  # synchronised BN: one batch, no split
    with pytest.raises(ValueError, match="head.bn_splits"):
        tiny(name, bn_splits=5)


@pytest.mark.parametrize("name", ["moco", "adco"])
def test_queries_and_keys_are_normalised_with_different_groups_of_samples(name):
    """The query of image i sees the statistics of its own block of B/S images; its key, those of a block of the
    shuffled batch (MoCo Sec. 3.3). Reference: each block through the plain-BN encoders on its own."""
    method = tiny(name, bn_splits=4)
    views, _ = pool()
    x1, x2 = views[0][:BATCH], views[1][:BATCH]
    torch.manual_seed(3)
    out = method([x1, x2])
    torch.manual_seed(3)
    permutation = torch.randperm(BATCH)
    encoder, key_encoder = _unsplit_copy(method.encoder), _unsplit_copy(method.key_encoder)
    with torch.no_grad():
        q = torch.cat([F.normalize(method.projector(encoder(block)), dim=1) for block in x1.chunk(4)])
        key_groups = permutation.view(4, -1)
        k = torch.empty_like(q)
        for group in key_groups:
            k[group] = F.normalize(method.key_projector(key_encoder(x2[group])), dim=1)
    torch.testing.assert_close(out.embeddings[0].detach(), q, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.embeddings[1], k, rtol=1e-4, atol=1e-5)
    query_groups = torch.arange(BATCH).view(4, -1)
    assert any(set(g.tolist()) not in [set(h.tolist()) for h in query_groups] for g in key_groups)


def test_without_the_shuffle_each_key_shares_its_querys_batch_norm_group():
    """The ablation the shuffle exists for (shuffle_bn false): key i is normalised with query i's own group."""
    method = tiny("moco", bn_splits=4, shuffle_bn=False)
    views, _ = pool()
    x2 = views[1][:BATCH]
    key_encoder = _unsplit_copy(method.key_encoder)
    with torch.no_grad():
        k = method.keys(x2)
        aligned = torch.cat([F.normalize(method.key_projector(key_encoder(b)), dim=1) for b in x2.chunk(4)])
    torch.testing.assert_close(k, aligned, rtol=1e-4, atol=1e-5)


def _split_bn_rank_worker(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    method = tiny("moco", bn_splits=2)  # same seed, same weights on both ranks; the split is off under DDP
    views, _ = pool()
    own = slice(rank * BATCH // 2, (rank + 1) * BATCH // 2)
    torch.manual_seed(11)  # rank 0 draws the key permutation and broadcasts it
    out = method([views[0][:BATCH][own], views[1][:BATCH][own]])
    torch.save({"q": out.embeddings[0].detach(), "k": out.embeddings[1], "loss": out.loss.detach()},
               Path(folder) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_split_batch_norm_in_one_process_equals_shuffled_batch_norm_on_two_ranks(tmp_path):
    run_two_ranks(_split_bn_rank_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    method = tiny("moco", bn_splits=2)
    views, _ = pool()
    torch.manual_seed(11)
    out = method([views[0][:BATCH], views[1][:BATCH]])
    torch.testing.assert_close(out.embeddings[0].detach(), torch.cat([r["q"] for r in ranks]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.embeddings[1], torch.cat([r["k"] for r in ranks]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.loss.detach(), (ranks[0]["loss"] + ranks[1]["loss"]) / 2, rtol=1e-5, atol=1e-6)


def test_converting_to_split_batchnorm_shares_parameters_and_buffers():
    encoder = resnet18(width=4, stem="cifar", in_channels=3)
    before = dict(encoder.state_dict(keep_vars=True))
    convert_to_split_batchnorm(encoder, 4)
    after = encoder.state_dict(keep_vars=True)
    assert after.keys() == before.keys()  # encoder.safetensors keeps its keys
    assert all(after[key] is before[key] for key in before)


def test_instdisc_with_the_preset_noise_count_keeps_its_bank_and_learns_over_two_epochs(tmp_path):
    """Regression: with Z frozen at its value against the random initial bank (the authors' first_batch), a bank
    refilled with real embeddings made every noise posterior saturate: NCE rose 4.5x from epoch 1 to 2 (17.7 to
    80.9) and the embeddings collapsed to a narrow cone. Preset k = 4096, lr and (no) proximal term, digits."""
    # Pinned, so that the recipe fitting small runs keeps them: the preset's k, and a ResNet (not the small convnet).
    pinned = ["head.noise_samples=4096", "backbone.name=resnet18", "backbone.stem=cifar"]
    result = learns_on_digits("instdisc", tmp_path, ["train.epochs=2", "eval.every=1"] + pinned)
    first, last = (json.loads(line) for line in (tmp_path / "instdisc" / "metrics.jsonl").read_text().splitlines())
    # Epoch 2 is scored against a bank of real embeddings, harder than epoch 1's half-random one; a Z that
    # follows the bank keeps the NCE loss of the same order.
    assert last["nce"] < 1.5 * first["nce"], (first, last)
    assert last["knn_top1"] > first["knn_top1"] and last["knn_top1"] > result.knn_random_init + 0.3, (first, last)
    assert last["effective_rank"] > 10 and last["z_std_ratio"] > 0.15, last
