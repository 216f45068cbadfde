"""Rank helpers and gather-with-gradient over ``torch.distributed``.

Every function is the identity (or the trivial answer) in a single process, so
losses and methods call them unconditionally.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    return rank() == 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for the local slice.

    Each rank computes a loss on the full gathered batch; the gradient w.r.t. its
    own rows must include what every other rank's loss contributed, hence the
    all_reduce in backward. With losses averaged per rank and DDP averaging
    gradients over ranks, the result equals one process with the whole batch.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[rank() * n : (rank() + 1) * n]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, gradients flowing back to each rank.

    All ranks must pass tensors of the same shape. Identity in a single process.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0 without a gradient path (queues, banks, eval)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (a new tensor; no gradient path). Identity in one process."""
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (no gradient path). Identity in one process."""
    return all_reduce_sum(x) / world_size()


def gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every rank, in rank order (``[obj]`` in one process); for small per-rank state, e.g. checkpoints."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast(x: torch.Tensor, src: int = 0) -> torch.Tensor:
    """In-place broadcast of ``x`` from rank ``src``; returns ``x``."""
    if is_distributed():
        dist.broadcast(x, src)
    return x


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def init_from_env() -> None:
    """Join the process group that ``torchrun`` describes (WORLD_SIZE, RANK, MASTER_ADDR, ...).

    NCCL on GPUs, gloo on CPU; a no-op outside torchrun or when already initialised.
    """
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    use_cuda = torch.cuda.is_available() and os.environ.get("SELFSUP_BACKEND", "") != "gloo"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
