"""The stateful memories: MoCo's FIFO queue and InstDisc's memory bank."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selfsup.nn.memory import MemoryBank, Queue


def rows(start: int, n: int, dim: int = 3) -> torch.Tensor:
    """Row r is filled with the value start + r, so every row names its position in the stream."""
    return torch.arange(start, start + n, dtype=torch.float32)[:, None].repeat(1, dim)


def test_empty_queue_fills_in_order_then_reports_full():
    queue = Queue(size=10, dim=3, random_init=False)
    assert len(queue) == 0 and not queue.is_full
    queue.enqueue(rows(0, 4))
    assert len(queue) == 4
    assert torch.equal(queue.oldest_first(), rows(0, 4))
    queue.enqueue(rows(4, 6))
    assert len(queue) == 10 and queue.is_full
    assert torch.equal(queue.oldest_first(), rows(0, 10))


def test_queue_wraps_around_when_size_is_not_a_multiple_of_the_batch():
    queue = Queue(size=10, dim=3, random_init=False)
    for start in range(0, 16, 4):  # four batches of 4: 16 rows through a queue of 10
        queue.enqueue(rows(start, 4))
    assert len(queue) == 10
    assert torch.equal(queue.oldest_first(), rows(6, 10))  # the oldest six were dequeued
    assert int(queue.pointer) == 16 % 10
    # Storage is circular: rows 10..15 overwrote slots 0..5, rows 6..9 still sit in slots 6..9.
    assert torch.equal(queue.items[:6], rows(10, 6)) and torch.equal(queue.items[6:], rows(6, 4))


def test_queue_keeps_the_newest_rows_of_a_batch_larger_than_itself():
    queue = Queue(size=5, dim=3, random_init=False)
    queue.enqueue(rows(0, 2))
    queue.enqueue(rows(2, 12))
    assert torch.equal(queue.oldest_first(), rows(9, 5))


def test_random_queue_starts_full_of_unit_vectors_and_stores_no_gradient():
    queue = Queue(size=8, dim=4)
    assert queue.is_full
    assert torch.allclose(queue.items.norm(dim=1), torch.ones(8))
    x = torch.randn(3, 4, requires_grad=True)
    queue.enqueue(x)
    assert not queue.items.requires_grad
    assert torch.equal(queue.items[:3], x.detach())
    assert {name for name, _ in queue.named_buffers()} == {"items", "pointer", "count"}


def test_memory_bank_starts_on_the_unit_sphere():
    bank = MemoryBank(num_samples=50, dim=16)
    assert torch.allclose(bank.vectors.norm(dim=1), torch.ones(50), atol=1e-6)


def test_memory_bank_update_is_the_normalised_momentum_mix_of_the_given_rows_only():
    torch.manual_seed(0)
    bank = MemoryBank(num_samples=20, dim=8)
    before = bank.vectors.clone()
    indices = torch.tensor([3, 7, 11])
    features = torch.randn(3, 8)
    bank.update(indices, features, momentum=0.5)
    for row, i in enumerate(indices.tolist()):
        mixed = [0.5 * before[i, d].item() + 0.5 * features[row, d].item() for d in range(8)]
        norm = sum(m * m for m in mixed) ** 0.5
        assert bank.vectors[i].tolist() == pytest.approx([m / norm for m in mixed], abs=1e-6)
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[indices] = False
    assert torch.equal(bank.vectors[untouched], before[untouched])
    assert torch.allclose(bank.vectors.norm(dim=1), torch.ones(20), atol=1e-6)


def test_memory_bank_momentum_zero_stores_the_normalised_features():
    bank = MemoryBank(num_samples=6, dim=4)
    features = torch.randn(2, 4)
    bank.update(torch.tensor([0, 5]), features, momentum=0.0)
    assert torch.allclose(bank[torch.tensor([0, 5])], F.normalize(features, dim=1))


def test_noise_indices_are_uniform_over_the_bank():
    bank = MemoryBank(num_samples=10, dim=4)
    generator = torch.Generator().manual_seed(0)
    indices = bank.sample_indices(20_000, generator=generator)
    assert indices.shape == (20_000,)
    counts = torch.bincount(indices, minlength=10).float()
    assert indices.min() >= 0 and indices.max() < 10
    assert (counts / counts.sum() - 0.1).abs().max() < 0.01  # 20,000 draws: std of a share ~0.002
