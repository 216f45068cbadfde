"""DeepCluster v2 (Caron et al. 2020, Sec. 4.2 and App. B): k-means pseudo-labels, prototype cross-entropy.

    z = g(f(x)) / |g(f(x))|                          normalised projections of every crop
    every epoch: for each head h, spherical k-means (K_h clusters) of the memory of all N samples'
      projections (global crop h mod 2, as last seen); prototypes C_h <- centroids, a_h <- assignments
    L = 1/H sum_h CE(z C_h^T / tau, a_h)             every crop predicts its image's cluster
The prototypes are never trained (the paper freezes them for the whole run). Epoch 0 fills the
memory (the paper's initial forward-only pass over the data): it has no assignments yet, so its loss
is 0 and the network's gradients are dropped, so the optimizer leaves it untouched. (A zero loss is
not enough: its gradient is weight decay alone, which LARS's trust ratio turns into a shrink of every
weight by lr x eta per step, whatever the decay; one epoch at lr 0.6 scaled the weights by ~1e-5,
below batch norm's epsilon, and every input then gave the same projection.) Only the samples seen
in an epoch are clustered and trained on in the next, as the paper's memory holds one epoch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import distributed
from selfsup.losses import deepcluster_v2
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.methods.swav import encode_crops
from selfsup.nn.heads import mlp
from selfsup.nn.prototypes import Prototypes


@torch.no_grad()
def spherical_kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """k-means of unit vectors x [N, D] by cosine similarity: (centroids [k, D], assignments [N]).

    Starts from k distinct random rows; each iteration assigns every row to its most similar
    centroid and moves each non-empty centroid to the normalised mean of its rows; the
    returned assignments are those of the returned centroids.
    """
    if x.shape[0] < k:
        raise ValueError(
            f"k-means with {k} clusters needs at least {k} samples, got {x.shape[0]}: lower head.num_prototypes"
        )
    centroids = x[torch.randperm(x.shape[0], generator=generator)[:k].to(x.device)]
    for iteration in range(iters + 1):
        assignments = torch.cat([(chunk @ centroids.T).argmax(dim=1) for chunk in x.split(65536)])
        if iteration == iters:
            break
        sums = torch.zeros_like(centroids).index_add_(0, assignments, x)
        nonempty = torch.bincount(assignments, minlength=k) > 0
        centroids = torch.where(nonempty[:, None], F.normalize(sums, dim=1), centroids)
    return centroids, assignments


class DeepClusterV2(Method):
    name = "deepclusterv2"
    family = "clustering"
    prevents_collapse = "k-means of a feature memory every epoch, fixed prototypes"
    paper = "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments (Caron et al., NeurIPS)"
    year = 2020

    def __init__(self, encoder, cfg: dict, info: RunInfo):
        super().__init__(encoder, cfg, info)
        head = cfg["head"]
        dim, sizes = head["proj_out_dim"], list(head["num_prototypes"])
        if max(sizes) > info.num_samples:
            raise ValueError(
                f"deepclusterv2 cannot make {max(sizes)} clusters of {info.num_samples} samples: "
                "lower head.num_prototypes (e.g. --set 'head.num_prototypes=[100,100,100]')"
            )
        self.projector = mlp(info.feature_dim, head["proj_hidden_dim"], dim, num_layers=2)
        self.heads = nn.ModuleList(Prototypes(dim, k) for k in sizes).requires_grad_(False)
        self.register_buffer("memory", torch.zeros(2, info.num_samples, dim))
        self.register_buffer("seen", torch.zeros(info.num_samples, dtype=torch.bool))
        self.register_buffer("assignments", torch.full((len(sizes), info.num_samples), -1, dtype=torch.long))
        # Identical on every rank by construction: spare DDP's per-step broadcast of N-sized buffers.
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            self, ["memory", "seen", "assignments"]
        )
        self._to_remember: tuple[Tensor, Tensor] | None = None
        self._filling_memory = True

    @torch.no_grad()
    def on_epoch_start(self, epoch: int) -> None:
        self._filling_memory = not bool(self.seen.any())
        if self._filling_memory:
            return
        rows = self.seen.nonzero().squeeze(1)
        generator = torch.Generator().manual_seed(epoch)  # same start on every rank: the memory is identical
        self.assignments.fill_(-1)
        for h, prototypes in enumerate(self.heads):
            centroids, assigned = spherical_kmeans(
                self.memory[h % 2, rows], prototypes.weight.shape[0], self.cfg["head"]["kmeans_iters"], generator
            )
            prototypes.set_(centroids)
            self.assignments[h, rows] = assigned
        self.seen.fill_(False)

    def runtime_state(self) -> dict:
        return {"filling_memory": self._filling_memory}  # decided at the epoch's start, from the memory then

    def load_runtime_state(self, state: dict) -> None:
        self._filling_memory = state["filling_memory"]

    def on_after_backward(self, step: int) -> None:
        if self._filling_memory:
            for p in [*self.encoder.parameters(), *self.projector.parameters()]:
                p.grad = None

    def forward(self, views: list[Tensor], labels: Tensor | None = None, indices: Tensor | None = None) -> StepOutput:
        if indices is None:
            raise ValueError("deepclusterv2 needs the batch's dataset indices: call forward(views, indices=...)")
        batch, indices = views[0].shape[0], indices.to(self.memory.device)
        h = encode_crops(self.encoder, views)
        z = F.normalize(self.projector(h), dim=1)
        targets = self.assignments[:, indices].repeat(1, len(views))
        loss = deepcluster_v2([prototypes(z) for prototypes in self.heads], list(targets), **self.cfg["loss"])
        self._to_remember = (indices, z[: 2 * batch].detach().view(2, batch, -1))
        return StepOutput(loss=loss, features=h[:batch], embeddings=(z[:batch], z[batch : 2 * batch]))

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        if self._to_remember is None:
            return
        indices, z = self._to_remember
        indices = distributed.gather_no_grad(indices)
        z = distributed.gather_no_grad(z.transpose(0, 1).contiguous()).transpose(0, 1)
        self.memory[:, indices] = z.to(self.memory.dtype)
        self.seen[indices] = True
        self._to_remember = None
