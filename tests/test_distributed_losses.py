"""Losses with gather=True on 2 gloo processes equal one process holding the whole batch.

Two CPU processes are spawned once for the module; each takes half of a fixed float64 batch,
passes it through a shared linear layer, computes every loss with ``gather=True`` and
backpropagates; the parameter gradients are then averaged over ranks, as DDP does. The mean of
the per-rank losses and those averaged gradients must equal the loss and gradients of a single
process with the whole batch and ``gather=False``.
"""

from __future__ import annotations

import datetime
import socket
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup import distributed
from selfsup.losses import (
    barlow_twins,
    batch_triplet,
    cpc,
    deep_infomax,
    info_nce,
    nt_xent,
    sinkhorn_knopp,
    supcon,
    swav,
    uniformity,
    vicreg,
)

WORLD = 2
# rank 0 holds labels [0, 0, 0, 1], rank 1 [1, 2, 3, 3]
LABELS = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3])


def batch_and_model() -> tuple[torch.Tensor, torch.nn.Linear]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(len(LABELS), 3, 6, dtype=torch.float64, generator=generator)  # [B, views or time, in]
    model = torch.nn.Linear(6, 5).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, dtype=torch.float64, generator=generator) / 2)
    return x, model


PREDICTOR = torch.randn(5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
PROTOTYPES = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

# name -> loss(z [b, 3, 5], labels [b], gather)
CASES = {
    "nt_xent": lambda z, y, gather: nt_xent(z[:, 0], z[:, 1], temperature=0.5, gather=gather),
    "supcon": lambda z, y, gather: supcon(z, y, temperature=0.3, gather=gather),
    # one view: label 1's positive is on the other rank, label 2 has none; 4 and 3 anchors count
    "supcon_one_view": lambda z, y, gather: supcon(z[:, :1], y, temperature=0.3, gather=gather),
    "supcon_unlabelled": lambda z, y, gather: supcon(z, temperature=0.3, gather=gather),
    "info_nce": lambda z, y, gather: info_nce(z[:, 0], z[:, 1], None, temperature=0.2, gather=gather),
    "cpc": lambda z, y, gather: cpc(z, z.flip(1), [PREDICTOR, PREDICTOR.T], gather=gather),
    "deep_infomax_jsd": lambda z, y, gather: deep_infomax(z, z.mean(1), "jsd", gather=gather),
    "deep_infomax_infonce": lambda z, y, gather: deep_infomax(z, z.mean(1), "infonce", gather=gather),
    "batch_triplet": lambda z, y, gather: batch_triplet(z[:, 0], y, margin=1.0, mining="semihard", gather=gather),
    "uniformity": lambda z, y, gather: uniformity(z[:, 0], gather=gather),
    "barlow_twins": lambda z, y, gather: barlow_twins(z[:, 0], z[:, 1], gather=gather),
    "vicreg": lambda z, y, gather: vicreg(z[:, 0], z[:, 1], gather=gather),
    "swav": lambda z, y, gather: swav(z[:, 0] @ PROTOTYPES.T, z[:, 1] @ PROTOTYPES.T, gather=gather),
}


def loss_and_gradients(name: str, rows: slice, gather: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    x, model = batch_and_model()
    loss = CASES[name](model(x[rows]), LABELS[rows], gather)
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


def sinkhorn_codes(rows: slice, gather: bool) -> torch.Tensor:
    x, model = batch_and_model()
    with torch.no_grad():
        return sinkhorn_knopp(model(x[rows, 0]) @ PROTOTYPES.T, epsilon=0.5, iters=3, gather=gather)


def worker(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)  # two processes share the cores
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),
    )
    size = len(LABELS) // WORLD
    rows = slice(rank * size, (rank + 1) * size)
    results: dict[str, object] = {}
    for name in CASES:
        try:
            loss, gradients = loss_and_gradients(name, rows, gather=True)
            gradients = [distributed.all_reduce_mean(g) for g in gradients]  # what DDP does
            results[name] = (distributed.all_reduce_mean(loss), gradients)
        except Exception:  # reported by the test of this case
            results[name] = traceback.format_exc()
    results["local_nt_xent"] = distributed.all_reduce_mean(loss_and_gradients("nt_xent", rows, gather=False)[0])
    results["sinkhorn_knopp"] = sinkhorn_codes(rows, gather=True)
    torch.save(results, Path(folder) / f"rank{rank}.pt")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def per_rank(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("distributed")
    mp.spawn(worker, args=(free_port(), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(WORLD)]


@pytest.mark.parametrize("name", list(CASES))
def test_gathered_loss_and_gradients_equal_one_process(per_rank, name):
    result = per_rank[0][name]
    assert not isinstance(result, str), f"{name} failed under 2 processes:\n{result}"
    loss, gradients = result
    single_loss, single_gradients = loss_and_gradients(name, slice(None), gather=False)
    torch.testing.assert_close(loss, single_loss, rtol=1e-9, atol=1e-12)
    for ours, single in zip(gradients, single_gradients):
        torch.testing.assert_close(ours, single, rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(per_rank[1][name][1], gradients)  # every rank steps identically


def test_without_gather_the_loss_differs(per_rank):
    """The comparison above is sensitive: per-rank negatives alone give another loss."""
    single_loss, _ = loss_and_gradients("nt_xent", slice(None), gather=False)
    assert abs(per_rank[0]["local_nt_xent"].item() - single_loss.item()) > 1e-3


def test_sinkhorn_normalises_over_the_global_batch(per_rank):
    single = sinkhorn_codes(slice(None), gather=False)
    torch.testing.assert_close(torch.cat([per_rank[0]["sinkhorn_knopp"], per_rank[1]["sinkhorn_knopp"]]), single)
