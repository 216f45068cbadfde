"""DDP with 2 gloo processes on CPU equals one process with the same global batch.

Views are made deterministic (full-image crops, no flip or jitter) so that both runs see the
same inputs, and the runs are in float64 so that equality can be asserted tightly (in float32,
rounding differences of 1e-7 grow to 1e-3 within a few steps of training); everything else --
sharding, gather, global batch norm, DDP's gradient averaging, EMA, queues, Sinkhorn -- is the
code path of a real run.
"""

import json
import os
import shutil
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.run.checkpoint import load_checkpoint
from selfsup.train.trainer import fit
from tests.helpers import digits

METHODS = ["simclr", "moco", "byol", "swav", "barlow_twins"]
RESUMED = ["simclr", "byol"]
SETTINGS = [
    "backbone.width=4", "train.batch_size=512", "train.epochs=3", "train.device=cpu", "train.progress=false",
    "train.sync_batchnorm=true", "train.precision=fp64", "optim.warmup_epochs=1", "eval.every=0",
    "views.scale=[1.0, 1.0]", "views.ratio=[1.0, 1.0]", "views.flip_p=0.0", "views.jitter_p=0.0",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, root: str) -> None:
    """Epoch 1 of every method under DDP (kept as ddp_epoch1/), then epoch 2 for RESUMED methods."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    for method in METHODS:
        run = os.path.join(root, "ddp", method)
        fit(method, "digits", out_dir=run, assignments=SETTINGS, stop_after_epoch=1, datasets=digits())
        dist.barrier()
        if rank == 0:
            shutil.copytree(run, os.path.join(root, "ddp_epoch1", method))
        dist.barrier()
        if method in RESUMED:
            fit(out_dir=run, resume=True, stop_after_epoch=2, datasets=digits())
    dist.destroy_process_group()


def _losses(run) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _parameters(run) -> dict:
    return load_checkpoint(run / "checkpoints" / "last.pt")["method"]


def _assert_same_parameters(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].double(), b[key].double(), rtol=1e-6, atol=1e-9), key


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    mp.spawn(_ddp_worker, args=(_free_port(), str(root)), nprocs=2, join=True)
    return root


@pytest.mark.parametrize("method", METHODS)
def test_two_processes_equal_one_with_the_global_batch(runs, method, tmp_path):
    fit(method, "digits", out_dir=tmp_path / method, assignments=SETTINGS, stop_after_epoch=1, datasets=digits())
    ddp = runs / "ddp_epoch1" / method
    assert _losses(ddp) == pytest.approx(_losses(tmp_path / method), rel=1e-6)
    _assert_same_parameters(_parameters(ddp), _parameters(tmp_path / method))


@pytest.mark.parametrize("method", RESUMED)
def test_checkpoint_of_two_processes_resumes_in_one_and_continues_identically(runs, method, tmp_path):
    moved = tmp_path / method
    shutil.copytree(runs / "ddp_epoch1" / method, moved)
    fit(out_dir=moved, resume=True, stop_after_epoch=2, datasets=digits())
    assert _losses(moved) == pytest.approx(_losses(runs / "ddp" / method), rel=1e-6)
    _assert_same_parameters(_parameters(moved), _parameters(runs / "ddp" / method))
