"""SwAV (Caron et al. 2020): swap the codes of two views, computed by Sinkhorn-Knopp over prototypes.

    z = g(f(x)) / |g(f(x))|,  s = z C^T                  normalised projections scored by prototypes C
    q_i = SinkhornKnopp([queue_i; s_i])[-B:]            equipartitioned codes of global crops 1, 2
    L = 1/2 sum_i 1/(V-1) sum_{v != i} H(q_i, softmax(s_v / tau))   every other crop predicts q_i
    C is re-normalised after every step and not updated during the first epoch(s);
    with small batches, a queue of earlier features joins the Sinkhorn problem (Sec. 4.1, App. A).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup import distributed
from selfsup.losses import swav
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.nn.heads import mlp
from selfsup.nn.prototypes import Prototypes


def encode_crops(encoder: nn.Module, views: list[Tensor]) -> Tensor:
    """Encoder outputs of all views in view order; consecutive views of one size share a forward pass."""
    outputs, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        outputs.append(encoder(torch.cat(views[start:end])))
        start = end
    return torch.cat(outputs)


class SwAV(Method):
    name = "swav"
    family = "clustering"
    prevents_collapse = "equal-size cluster assignments (Sinkhorn-Knopp), multi-crop"
    paper = "Unsupervised Learning of Visual Features by Contrasting Cluster Assignments (Caron et al., NeurIPS)"
    year = 2020

    def __init__(self, encoder, cfg: dict, info: RunInfo):
        super().__init__(encoder, cfg, info)
        head = cfg["head"]
        dim = head["proj_out_dim"]
        self.projector = mlp(info.feature_dim, head["proj_hidden_dim"], dim, num_layers=2)
        self.prototypes = Prototypes(dim, head["num_prototypes"])
        # Each rank keeps its share of the queue, as in the paper's code; Sinkhorn balances over all ranks.
        # Checkpoints hold every rank's share (``runtime_state``), not the buffers themselves.
        queue_length = head.get("queue_size", 0) // distributed.world_size()
        self.register_buffer("queue", torch.zeros(2, queue_length, dim), persistent=False)
        # Per-rank state: DDP must not overwrite it with rank 0's copy (its buffer broadcast).
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self, ["queue"])
        self.frozen_steps = head.get("freeze_prototypes_epochs", 1) * info.steps_per_epoch
        self.epoch = 0
        self.queue_filled = 0  # real entries in this rank's share, counted on the host: no step reads the device
        # What forward needs of the two counts, as flags: a compiled step is specialised on the values it reads,
        # and flags change twice a run where the counts change every epoch and step.
        self._set_queue_flags()
        self._to_enqueue: Tensor | None = None

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        self._set_queue_flags()

    def queue_in_use(self) -> bool:
        return self.queue.shape[1] > 0 and self.epoch >= self.cfg["head"].get("queue_start_epoch", 0)

    def _set_queue_flags(self) -> None:
        self._queue_on = self.queue_in_use()
        self._queue_full = self.queue_filled == self.queue.shape[1]

    def forward(self, views: list[Tensor], labels: Tensor | None = None, indices: Tensor | None = None) -> StepOutput:
        batch = views[0].shape[0]
        h = encode_crops(self.encoder, views)
        z = F.normalize(self.projector(h), dim=1)
        scores = self.prototypes(z).split(batch)
        queue_scores = None
        if self._queue_on:
            if self._queue_full:
                with torch.no_grad():
                    queue_scores = (self.prototypes(self.queue[0]), self.prototypes(self.queue[1]))
            self._to_enqueue = z[: 2 * batch].detach().view(2, batch, -1)
        loss = swav(scores[0], scores[1], small_crop_scores=scores[2:], queue_scores=queue_scores, gather=True,
                    **self.cfg["loss"])
        metrics = {"queue_used": float(queue_scores is not None)}
        return StepOutput(loss=loss, metrics=metrics, features=h[:batch], embeddings=(z[:batch], z[batch : 2 * batch]))

    def runtime_state(self) -> dict:
        """The epoch and the queue of every rank (rank-major), so that a resumed run uses the same features."""
        shares = distributed.gather_no_grad(self.queue.transpose(0, 1).contiguous())  # [world * length, 2, dim]
        return {"epoch": self.epoch, "queue": shares.cpu(), "queue_filled": self.queue_filled}

    def load_runtime_state(self, state: dict) -> None:
        """This rank's share of the saved queue; with another number of processes, a slice of the same features."""
        self.epoch = state["epoch"]
        length, rank = self.queue.shape[1], distributed.rank()
        share = state["queue"][rank * length : (rank + 1) * length]
        if share.shape[0] == length and share.shape[-1] == self.queue.shape[-1]:
            self.queue.copy_(share.transpose(0, 1))
            self.queue_filled = min(int(state["queue_filled"]), length)
        else:  # the saved queue is too short for this rank's share: it refills within length / batch steps
            self.queue_filled = 0
        self._set_queue_flags()

    def on_after_backward(self, step: int) -> None:
        if step < self.frozen_steps:
            self.prototypes.weight.grad = None

    @torch.no_grad()
    def on_step_end(self, step: int, total_steps: int) -> None:
        self.prototypes.normalize_()
        if self._to_enqueue is not None:
            new = self._to_enqueue.to(self.queue.dtype)
            length = self.queue.shape[1]
            self.queue.copy_(torch.cat([new, self.queue], dim=1)[:, :length])
            self.queue_filled = min(self.queue_filled + new.shape[1], length)
            self._set_queue_flags()
            self._to_enqueue = None
