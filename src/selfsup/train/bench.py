"""``selfsup bench``: the cost of the SSL machinery over the bare backbone, measured in one run.

step_ms: one full training step (views, method forward/backward, optimizer, EMA/queue updates).
backbone_ms: forward + backward of the bare backbone on the same views (all views, one pass each),
with its own optimizer step. overhead = step_ms / backbone_ms.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from selfsup.data.base import ArrayDataset
from selfsup.data.views import build_views
from selfsup.train.optim import build_optimizer
from selfsup.train.setup import build_method, make_config, resolve_device, seed_everything


def synthetic_images(num: int, size: int = 32, channels: int = 3, classes: int = 10) -> ArrayDataset:
    """Random uint8 images of CIFAR size; speed does not depend on the pixels."""
    generator = torch.Generator().manual_seed(0)
    return ArrayDataset(
        data=torch.randint(0, 256, (num, channels, size, size), dtype=torch.uint8, generator=generator),
        labels=torch.randint(0, classes, (num,), generator=generator),
        classes=[str(i) for i in range(classes)],
        name=f"synthetic{size}",
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
    )


def _interleaved_ms(first: Callable[[], None], second: Callable[[], None], steps: int, warmup: int,
                    device: torch.device) -> tuple[float, float]:
    """Median milliseconds of each function, timed alternately so that machine noise hits both alike."""

    def once(fn: Callable[[], None]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1000.0

    for _ in range(warmup):
        first()
        second()
    times = [(once(first), once(second)) for _ in range(steps)]
    return statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)


def bench(
    method: str,
    backbone: str = "resnet18",
    batch_size: int = 256,
    steps: int = 5,
    warmup: int = 2,
    image_size: int = 32,
    device: str = "auto",
    assignments: list[str] | None = None,
) -> dict[str, Any]:
    """Time ``steps`` training steps of ``method`` and of its bare backbone, alternating step by step."""
    data = synthetic_images(batch_size * (steps + warmup), image_size)
    cfg = make_config(method, "synthetic", data, overrides={"backbone": {"name": backbone}}, assignments=assignments)
    dev = resolve_device(device if device != "auto" else cfg["train"]["device"])
    bf16 = dev.type == "cuda" and cfg["train"]["precision"] in ("auto", "bf16")
    seed_everything(0)
    model = build_method(cfg, data, steps_per_epoch=steps + warmup).to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    views = build_views(cfg["views"], data.channels, data.input_size, data.mean, data.std)
    optimizer = build_optimizer(model.param_groups(), cfg["optim"], batch_size)
    backbone_optimizer = torch.optim.SGD(model.encoder.parameters(), lr=1e-6, momentum=0.9)
    batch = data.data[:batch_size].to(dev)
    labels = data.labels[:batch_size].to(dev)
    indices = torch.arange(batch_size, device=dev)
    fixed_views = [v.detach() for v in views(batch)]
    step = [0]

    def method_step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(views(batch), labels, indices)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        model.on_after_backward(step[0])
        optimizer.step()
        model.on_step_end(step[0], steps + warmup)
        step[0] += 1

    def backbone_step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = sum(model.encoder(v).float().mean() for v in fixed_views)
        backbone_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        backbone_optimizer.step()

    step_ms, backbone_ms = _interleaved_ms(method_step, backbone_step, steps, warmup, dev)
    result = {
        "method": method,
        "backbone": backbone,
        "batch_size": batch_size,
        "image_size": image_size,
        "views": len(fixed_views),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "precision": "bf16" if bf16 else "fp32",
        "images_per_s": batch_size / step_ms * 1000.0,
        "step_ms": step_ms,
        "backbone_ms": backbone_ms,
        "overhead": step_ms / backbone_ms,
    }
    if dev.type == "cuda":
        result["memory_peak_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return result
