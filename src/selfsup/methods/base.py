"""The contract every method follows (DESIGN.md): encoder + heads + objective + per-step state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class RunInfo:
    """What a method may know about the run it is built for."""

    feature_dim: int  # size of the encoder's output representation
    num_samples: int  # training-set size (memory banks, k-means memories)
    num_classes: int  # 0 when the data has no labels
    steps_per_epoch: int
    epochs: int
    channels: int  # image channels, or sequence channels
    input_size: int  # image side in pixels, or sequence length


@dataclass
class StepOutput:
    """What one training step returns.

    loss: the scalar to minimise. metrics: detached floats to log.
    features: the encoder's representation of the first view (with gradient; the
    trainer detaches it for the online linear probe). embeddings: projections of
    two views of the same images, for the collapse monitors (detached by the trainer).
    """

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    features: Tensor | None = None
    embeddings: tuple[Tensor, Tensor] | None = None


class Method(nn.Module):
    """Base class: subclasses set the class attributes and implement ``forward``.

    ``cfg`` is the whole run configuration (a nested dict, see ``train.config``);
    a method reads its own sections ``head`` (projector, predictor, prototypes,
    queue/bank/EMA settings) and ``loss`` (keyword arguments of its loss).
    """

    name: ClassVar[str]
    family: ClassVar[str]  # "contrastive" | "clustering" | "distillation" | "infomax"
    prevents_collapse: ClassVar[str]  # what stops every input mapping to one point, for `selfsup methods`
    paper: ClassVar[str]
    year: ClassVar[int]
    needs_labels: ClassVar[bool] = False
    data_kind: ClassVar[str] = "image"  # "image" | "sequence" | "any"

    def __init__(self, encoder: nn.Module, cfg: dict[str, Any], info: RunInfo):
        super().__init__()
        self.encoder = encoder
        self.cfg = cfg
        self.info = info
        self.probe = nn.Linear(info.feature_dim, info.num_classes) if info.num_classes > 0 else None

    def forward(
        self, views: list[Tensor], labels: Tensor | None = None, indices: Tensor | None = None
    ) -> StepOutput:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        """Called before the first step of each epoch (k-means, schedules by epoch)."""

    def on_after_backward(self, step: int) -> None:
        """Called between backward and the optimizer step (gradient surgery, freezing)."""

    def on_step_end(self, step: int, total_steps: int) -> None:
        """Called after the optimizer step (EMA, queue and bank updates)."""

    def runtime_state(self) -> dict[str, Any]:
        """State a resumed run needs that is neither a parameter nor a persistent buffer (plain values, tensors).

        Checkpoints hold it beside ``state_dict()``, so that a run resumed at any step, even mid-epoch,
        continues exactly as it would have. Called on every rank (it may gather); {} by default.
        """
        return {}

    def load_runtime_state(self, state: dict[str, Any]) -> None:
        """Restore what ``runtime_state`` returned, possibly from a run with another number of processes."""

    def param_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the optimizer.

        Keys besides ``params``: ``lr`` (this group's base lr instead of the run's),
        ``weight_decay``, ``fixed_lr`` (True: not scheduled), ``lars_exclude``
        (True: no LARS adaptation and no weight decay), ``name`` (for logs).
        The default puts biases and norm parameters in a LARS-excluded group, as
        SimCLR/BYOL do, and the online probe in its own group without weight decay.
        The biases and norm parameters go without weight decay only under LARS (SimCLR's,
        BYOL's and solo-learn's filters); the SGD and Adam(W) papers' code decays every
        parameter (InstDisc's cifar.py, MoCo's main_moco.py, SimSiam, SupContrast:
        ``SGD(model.parameters(), weight_decay=...)``), so there they keep the run's weight decay.
        """
        probe = {id(p) for p in self.probe.parameters()} if self.probe is not None else set()
        regular, excluded = [], []
        for p in self.parameters():
            if not p.requires_grad or id(p) in probe:
                continue
            (excluded if p.ndim <= 1 else regular).append(p)
        groups = [
            {"params": regular, "name": "weights"},
            {"params": excluded, "name": "bias_norm", "lars_exclude": True},
        ]
        if self.cfg.get("optim", {}).get("name", "lars") == "lars":
            groups[1]["weight_decay"] = 0.0
        if self.probe is not None:
            groups.append(
                {"params": list(self.probe.parameters()), "name": "probe", "weight_decay": 0.0, "lars_exclude": True}
            )
        return [g for g in groups if g["params"]]

    def training_loss(self, out: StepOutput, labels: Tensor) -> tuple[Tensor, Tensor | None]:
        """What a training step minimises: the method's loss plus the online probe's; and the probe's accuracy.

        Without a probe or without features in ``out`` this is the method's loss alone, and the accuracy None.
        """
        if out.features is None or self.probe is None:
            return out.loss, None
        probe_loss, accuracy = self.probe_loss(out.features, labels)
        return out.loss + probe_loss, accuracy

    def probe_loss(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy and accuracy of the online linear probe on detached features.

        Labels < 0 (unlabelled samples) are ignored; with none labelled both are 0.
        """
        logits = self.probe(features.detach().to(self.probe.weight.dtype))
        known = (labels >= 0).float()
        per_sample = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
        count = known.sum().clamp_min(1.0)
        accuracy = ((logits.argmax(1) == labels).float() * known).sum() / count
        return (per_sample * known).sum() / count, accuracy

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        """The representation users keep: the encoder's output."""
        return self.encoder(x)
