"""MoCo v1 (He et al. 2020) and v2 (Chen et al. 2020): momentum key encoder and a queue of negative keys.

    q = normalise(g_q(f_q(x_1)))                   query, with gradient
    k = normalise(g_k(f_k(x_2)))                   key, no gradient (f_k, g_k: EMAs of f_q, g_q)
    L = -log exp(q.k / tau) / (exp(q.k / tau) + sum_{n in queue} exp(q.n / tau))
    after the step: theta_k <- m theta_k + (1 - m) theta_q;  enqueue k, dequeue the oldest

v1 projects with one linear layer; v2 with a 2-layer MLP (no BN) and adds blur to the views.

Shuffling BN (v1 Sec. 3.3): BatchNorm statistics are per device, and the key encoder sees the
batch in a random order, so a query and its positive key are not normalised with the statistics
of the same samples (which would let the pair be recognised by the leak instead of by content).
Under DDP each rank is one device and the keys are shuffled across ranks. In one process the
authors' CIFAR-10 demo (facebookresearch/moco, colab/moco_cifar10_demo.ipynb) emulates
``--bn-splits 8`` devices: every BatchNorm of both encoders normalises groups of B/8 samples
(``nn.split_bn``) and the keys are shuffled across the groups. ``head.bn_splits`` sets the number of
groups (1: one BN batch, as the demo's SyncBatchNorm analogue); ``train.sync_batchnorm: true``
normalises over the whole batch everywhere and needs no shuffle.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import distributed
from selfsup.losses import info_nce
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.nn.heads import mlp
from selfsup.nn.memory import Queue
from selfsup.nn.momentum import ema_update, momentum_copy
from selfsup.nn.split_bn import SplitBatchNorm, convert_to_split_batchnorm
from selfsup.nn.sync_bn import GlobalBatchNorm

DEFAULT_BN_SPLITS = 8  # the authors' CIFAR-10 demo: --bn-splits 8, "to simulate 8 GPUs"


@torch.no_grad()
def shuffle_across_ranks(x: Tensor) -> tuple[Tensor, Tensor]:
    """This rank's share of the global batch in a random order, and the permutation used.

    The permutation of the gathered batch is drawn on rank 0 and broadcast; rank r takes
    its r-th slice. In a single process this is a permutation of the batch itself.
    """
    everyone = distributed.gather_no_grad(x)
    permutation = distributed.broadcast(torch.randperm(everyone.shape[0], device=x.device))
    return everyone[_own_slice(permutation)], permutation


@torch.no_grad()
def unshuffle_across_ranks(y: Tensor, permutation: Tensor) -> Tensor:
    """Undo ``shuffle_across_ranks``: each rank gets back the rows of its own inputs, in order."""
    everyone = distributed.gather_no_grad(y)
    return everyone[_own_slice(torch.argsort(permutation))]


def _own_slice(order: Tensor) -> Tensor:
    return order.view(distributed.world_size(), -1)[distributed.rank()]


def needs_shuffled_bn(key_encoder: nn.Module) -> bool:
    """Whether the keys' BatchNorm statistics are per device: per rank under DDP, per split in one process.

    Synchronised (global) BatchNorm sees the whole batch whatever its order, so it needs no shuffle.
    """
    if any(isinstance(m, (nn.SyncBatchNorm, GlobalBatchNorm)) for m in key_encoder.modules()):
        return False
    if distributed.is_distributed():
        return True
    return any(isinstance(m, SplitBatchNorm) and m.num_splits > 1 for m in key_encoder.modules())


def split_batchnorm(encoder: nn.Module, cfg: dict) -> None:
    """Turn ``encoder``'s BatchNorm layers into ``head.bn_splits`` groups, unless BN is synchronised.

    Call it before the momentum copy is made, so that both encoders split alike (as in the authors' demo).
    The split is active in one process only; under DDP the layers act as plain per-rank BatchNorm.
    """
    splits = cfg["head"].get("bn_splits", DEFAULT_BN_SPLITS)
    if not isinstance(splits, int) or isinstance(splits, bool) or splits < 1:
        raise ValueError(f"head.bn_splits must be a whole number >= 1, got {splits!r}")
    if splits == 1 or cfg["train"].get("sync_batchnorm", True):
        return
    batch = cfg["train"]["batch_size"]
    if distributed.world_size() == 1 and batch % splits:
        raise ValueError(
            f"batch size {batch} cannot be split into head.bn_splits={splits} batch-norm groups: "
            f"use a multiple of {splits} or --set head.bn_splits=N with N dividing {batch}"
        )
    convert_to_split_batchnorm(encoder, splits)


@torch.no_grad()
def momentum_keys(key_encoder: nn.Module, key_projector: nn.Module, x: Tensor, shuffle: bool) -> Tensor:
    """normalise(g_k(f_k(x))), computed on a batch shuffled across devices (ranks, or BN splits) when ``shuffle``."""
    if shuffle:
        x, permutation = shuffle_across_ranks(x)
    k = F.normalize(key_projector(key_encoder(x)), dim=1)
    return unshuffle_across_ranks(k, permutation) if shuffle else k


class MoCo(Method):
    name = "moco"
    family = "contrastive"
    prevents_collapse = "a queue of keys from a momentum encoder as negatives"
    paper = "Improved Baselines with Momentum Contrastive Learning (Chen, Fan, Girshick, He; MoCo v2, arXiv)"
    year = 2020

    def __init__(self, encoder, cfg: dict, info: RunInfo):
        super().__init__(encoder, cfg, info)
        head = cfg["head"]
        split_batchnorm(self.encoder, cfg)
        self.projector = mlp(
            info.feature_dim, head.get("proj_hidden_dim", info.feature_dim), head["proj_out_dim"],
            num_layers=head["proj_layers"], batch_norm=False,
        )
        self.key_encoder = momentum_copy(self.encoder)
        self.key_projector = momentum_copy(self.projector)
        self.queue = Queue(head["queue_size"], head["proj_out_dim"])
        self.momentum = head["momentum"]
        self.shuffle_bn = head.get("shuffle_bn", True)
        self._keys: Tensor | None = None
        self._shuffle: bool | None = None  # decided at the first step, once the trainer has set up DDP

    def forward(self, views: list[Tensor], labels: Tensor | None = None, indices: Tensor | None = None) -> StepOutput:
        h = self.encoder(views[0])
        q = F.normalize(self.projector(h), dim=1)
        k = self.keys(views[1])
        loss = info_nce(q, k, negatives=self.queue.items, **self.cfg["loss"])
        self._keys = k
        metrics = {"positive_cosine": (q.detach() * k).sum(1).mean()}  # a tensor: no device sync per step
        return StepOutput(loss=loss, metrics=metrics, features=h, embeddings=(q, k))

    def keys(self, x: Tensor) -> Tensor:
        """Keys of the momentum encoder, the batch shuffled across devices (ranks, or BN splits in one process)."""
        if self._shuffle is None:
            self._shuffle = self.shuffle_bn and needs_shuffled_bn(self.key_encoder)
        return momentum_keys(self.key_encoder, self.key_projector, x, self._shuffle)

    def on_step_end(self, step: int, total_steps: int) -> None:
        ema_update(self.key_encoder, self.encoder, self.momentum)
        ema_update(self.key_projector, self.projector, self.momentum)
        if self._keys is not None:
            self.queue.enqueue(self._keys)
            self._keys = None


class MoCoV1(MoCo):
    name = "mocov1"
    paper = "Momentum Contrast for Unsupervised Visual Representation Learning (He, Fan, Wu, Xie, Girshick; CVPR)"
    year = 2020
