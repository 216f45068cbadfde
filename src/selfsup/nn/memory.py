"""Memories of past embeddings: MoCo's FIFO queue and InstDisc's per-sample memory bank.

Both are ``nn.Module`` s whose state lives in buffers (saved in checkpoints, moved with
``.to(device)``, never trained). Writes gather the batch from every rank first, so all
ranks hold the same memory under DDP; in a single process the gather is the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import distributed


class Queue(nn.Module):
    """A first-in-first-out queue of ``size`` vectors of ``dim`` features (He et al. 2020, MoCo Sec. 3.2).

    ``enqueue(x)`` writes the batch (gathered across ranks) at the pointer and advances it,
    wrapping around at the end: with ``size`` not a multiple of the batch, a batch that
    reaches the end is split, its head filling the last slots and its tail overwriting the
    oldest entries at the start. A (gathered) batch larger than ``size`` keeps its last
    ``size`` rows. The queue starts either full of random unit vectors (MoCo) or empty
    (``random_init=False``, SwAV's feature queue; ``len(queue)`` tells how many entries are real).
    """

    def __init__(self, size: int, dim: int, random_init: bool = True):
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"a queue needs a positive size and dim, got size={size}, dim={dim}")
        items = F.normalize(torch.randn(size, dim), dim=1) if random_init else torch.zeros(size, dim)
        self.register_buffer("items", items)
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.tensor(size if random_init else 0, dtype=torch.long))

    @property
    def size(self) -> int:
        return self.items.shape[0]

    def __len__(self) -> int:
        return int(self.count)

    @property
    def is_full(self) -> bool:
        return len(self) == self.size

    @torch.no_grad()
    def enqueue(self, x: Tensor) -> None:
        """Append ``x`` [B, dim] from every rank, overwriting the oldest entries once full."""
        x = distributed.gather_no_grad(x.detach())[-self.size :]
        n = x.shape[0]
        slots = (self.pointer + torch.arange(n, device=self.items.device)) % self.size
        self.items[slots] = x.to(self.items.dtype)
        self.pointer.copy_((self.pointer + n) % self.size)
        self.count.add_(n).clamp_(max=self.size)  # on the device: no read of the count by the host

    def oldest_first(self) -> Tensor:
        """The real entries, oldest first (the storage order of ``items`` is circular)."""
        if not self.is_full:
            return self.items[: len(self)]
        return torch.roll(self.items, shifts=-int(self.pointer), dims=0)


class MemoryBank(nn.Module):
    """One L2-normalised ``dim``-vector per training sample (Wu et al. 2018, InstDisc Sec. 3.2).

    Initialised with random unit vectors: uniform in [-1/sqrt(dim/3), 1/sqrt(dim/3)] per
    coordinate as in the authors' code, then projected on the sphere. After each step the
    entries of the batch move towards the new embeddings and are re-normalised:

        v_i <- normalise(m * v_i + (1 - m) * f_i)
    """

    def __init__(self, num_samples: int, dim: int):
        super().__init__()
        if num_samples < 1 or dim < 1:
            raise ValueError(f"a memory bank needs positive num_samples and dim, got {num_samples}, {dim}")
        bound = 1.0 / math.sqrt(dim / 3.0)
        self.register_buffer("vectors", F.normalize(torch.empty(num_samples, dim).uniform_(-bound, bound), dim=1))

    @property
    def num_samples(self) -> int:
        return self.vectors.shape[0]

    def __getitem__(self, indices: Tensor) -> Tensor:
        return self.vectors[indices]

    @torch.no_grad()
    def update(self, indices: Tensor, features: Tensor, momentum: float) -> None:
        """Momentum update of the rows ``indices`` with ``features`` (gathered across ranks)."""
        indices = distributed.gather_no_grad(indices)
        features = distributed.gather_no_grad(features.detach()).to(self.vectors.dtype)
        mixed = momentum * self.vectors[indices] + (1.0 - momentum) * features
        self.vectors[indices] = F.normalize(mixed, dim=1)

    def sample_indices(self, k: int, generator: torch.Generator | None = None) -> Tensor:
        """``k`` indices drawn uniformly with replacement: InstDisc's noise distribution P_n = 1/N."""
        return torch.randint(self.num_samples, (k,), device=self.vectors.device, generator=generator)
