"""The forward half of a training step (views, the method, its loss, the online probe), eager or compiled.

``train.compile`` says what ``torch.compile`` takes:
- ``false`` (default): nothing;
- ``true`` or ``backbone``: the encoder alone;
- ``step``: this whole forward half as one function, with static shapes (a run's batches all have the same
  size; multi-crop views are a few fixed sizes). AOTAutograd then compiles its backward as well, so views,
  heads, losses and the probe run as a few fused kernels instead of hundreds of small ones. The optimizer
  step and the methods' hooks (EMA, queues, banks) stay eager.
``train.compile_mode`` is torch.compile's ``mode`` (``reduce-overhead`` adds CUDA graphs) and
``train.compile_backend`` its ``backend`` (``inductor``; ``aot_eager`` traces without generating code, which
checks a compiled step quickly on a CPU). Off by default: inductor's first compilation of a ResNet-18 step
takes minutes on a CPU, and the gain is on GPUs, where the eager step is bound by kernel launches.

Nothing here makes the host wait for the device: metrics stay tensors on the device.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from selfsup.methods.base import Method, StepOutput

COMPILE_TARGETS = {False: None, True: "backbone", "backbone": "backbone", "step": "step"}
StepResult = tuple[StepOutput, Tensor, dict[str, Tensor]]


def compile_target(value: Any) -> str | None:
    """``train.compile`` as None, ``backbone`` or ``step``; one-line error for anything else."""
    if isinstance(value, (bool, str)) and value in COMPILE_TARGETS:
        return COMPILE_TARGETS[value]
    raise ValueError(f"train.compile must be false, true, backbone or step, not '{value}'")


class StepForward:
    """``(batch, labels, indices) -> (method output, loss to minimise, metrics)`` for one uint8 batch.

    The loss to minimise is the method's loss plus the online probe's; metrics are detached float
    tensors on the batch's device (a method's plain-number metric becomes a tensor filled there, not a
    copy from the host).
    """

    def __init__(
        self, model: nn.Module, method: Method, views: Callable[[Tensor], list[Tensor]], dtype: torch.dtype,
        bf16: bool, channels_last: bool,
    ):
        self.model, self.method, self.views = model, method, views
        self.dtype, self.bf16, self.channels_last = dtype, bf16, channels_last

    def __call__(self, batch: Tensor, labels: Tensor, indices: Tensor) -> StepResult:
        with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            views = [v.to(self.dtype) for v in self.views(batch)]
            if self.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) for v in views]
            out = self.model(views, labels, indices)
            total, probe_top1 = self.method.training_loss(out, labels)
        metrics = {"loss": out.loss, **out.metrics}
        if probe_top1 is not None:
            metrics["probe_top1"] = probe_top1
        return out, total, {key: _metric(value, batch.device) for key, value in metrics.items()}


def _metric(value: Tensor | float, device: torch.device) -> Tensor:
    if torch.is_tensor(value):
        return value.detach().float()
    return torch.full((), float(value), device=device)


def build_step_forward(
    model: nn.Module, method: Method, views: Callable[[Tensor], list[Tensor]], train: dict[str, Any],
    dtype: torch.dtype, bf16: bool, channels_last: bool,
) -> Callable[[Tensor, Tensor, Tensor], StepResult]:
    """The step's forward half for the ``train`` config section: compiled whole if ``train.compile`` is ``step``."""
    forward = StepForward(model, method, views, dtype, bf16, channels_last)
    if compile_target(train["compile"]) != "step":
        return forward
    return torch.compile(forward, dynamic=False, **compile_options(train))


def compile_options(train: dict[str, Any]) -> dict[str, Any]:
    """torch.compile's ``mode`` and ``backend`` from ``train.compile_mode`` / ``train.compile_backend``."""
    mode = train.get("compile_mode", "default")
    return {"backend": train.get("compile_backend", "inductor"), "mode": None if mode == "default" else mode}
