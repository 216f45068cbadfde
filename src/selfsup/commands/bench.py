"""``selfsup bench``: the cost of the SSL machinery over the backbone, measured in one run.

step_ms: one full training step (views, method forward/backward, optimizer, EMA/queue updates, probe).
backbone_ms: the same backbone passes the method makes, with nothing else: every encoder call the
method performs in a step (recorded by forward hooks on the encoder and its momentum copies, and its ``feature_maps`` calls) is
replayed on the bare encoder with the same inputs, with gradient where the method had it, followed by
backward and an SGD step. overhead = step_ms / backbone_ms is what the machinery (views, heads,
losses, optimizer, EMA, queues) costs on top of the backbone work the algorithm itself requires.
BYOL's target forward and MoCo's key forward count as backbone work; heads and losses do not.

machinery_ms / overhead_from_parts: the machinery timed on its own, with every encoder call answered by
its recorded output (a leaf that takes the gradient where the pass had one): views, heads, losses,
their backward, the whole optimizer step and the method's hooks. (backbone_ms + machinery_ms) /
backbone_ms then estimates the overhead without subtracting two large, noisy timings, which on a
busy CPU differ by a few percent from run to run even for identical work.

two_view_ms / overhead_vs_two_views: against forward + backward of the bare backbone on each view
once, the simplest baseline; differs from ``overhead`` only where the method runs the backbone more
(EMA targets) or less (asymmetric losses) than that.

The step's forward half is the trainer's (``train.step``); with ``--set train.compile=step`` the timed step
is compiled (its first call, the compilation, falls in the warm-up rounds) while the baselines and the
machinery stay eager. memory_peak_gb (CUDA): the most memory allocated during this benchmark.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from selfsup.data.base import ArrayDataset
from selfsup.data.views import build_views
from selfsup.train.numerics import resolve_numerics
from selfsup.train.optim import build_optimizer
from selfsup.train.setup import build_method, check_model_size, make_config, resolve_device, seed_everything
from selfsup.train.step import StepForward, build_step_forward, compile_target


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


@dataclass
class BackbonePass:
    """One encoder call of a method step: its input, its output (the stage maps for ``feature_maps``) and
    whether it ran with gradient."""

    inputs: Tensor
    with_grad: bool
    outputs: Tensor | list[Tensor] | None = None


STAGE_CALL = "feature_maps"  # a whole backbone pass that returns every stage's map (Deep InfoMax)


def encoder_modules(model: nn.Module) -> list[nn.Module]:
    """The method's encoder and every module of its type (momentum copies such as BYOL's target)."""
    return [m for m in model.modules() if type(m) is type(model.encoder)]


@contextmanager
def replaying(model: nn.Module, passes: list[BackbonePass]) -> Iterator[None]:
    """Within the block, encoder calls return the recorded outputs of ``passes`` in order, without running."""
    replay = iter(passes)

    def recorded(*args: Any, **kwargs: Any) -> Tensor | list[Tensor]:
        backbone_pass = next(replay)
        if isinstance(backbone_pass.outputs, list):
            return [m.detach().requires_grad_(backbone_pass.with_grad) for m in backbone_pass.outputs]
        return backbone_pass.outputs.detach().requires_grad_(backbone_pass.with_grad)

    encoders = encoder_modules(model)
    for module in encoders:
        module.forward = recorded
        if hasattr(module, STAGE_CALL):
            setattr(module, STAGE_CALL, recorded)
    try:
        yield
    finally:
        for module in encoders:
            del module.forward
        _restore_stage_calls(encoders)


def _restore_stage_calls(encoders: list[nn.Module]) -> None:
    """Drop the instance's ``feature_maps`` stand-in, so the class's method answers again."""
    for module in encoders:
        if STAGE_CALL in vars(module):
            delattr(module, STAGE_CALL)


def record_backbone_passes(model: nn.Module, run_step: Callable[[], None]) -> list[BackbonePass]:
    """The encoder calls of one ``run_step()`` (``encoder_modules``), in order."""
    passes: list[BackbonePass] = []

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        with_grad = torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())
        passes.append(BackbonePass(args[0].detach().clone(), with_grad, output.detach().clone()))

    def stage_call(module: nn.Module) -> Callable[[Tensor], list[Tensor]]:
        original = getattr(module, STAGE_CALL)

        def recording(x: Tensor) -> list[Tensor]:
            maps = original(x)
            with_grad = torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())
            passes.append(BackbonePass(x.detach().clone(), with_grad, [m.detach().clone() for m in maps]))
            return maps
        return recording

    encoders = encoder_modules(model)
    handles = [m.register_forward_hook(hook) for m in encoders]
    for module in encoders:
        if hasattr(module, STAGE_CALL):
            setattr(module, STAGE_CALL, stage_call(module))
    try:
        run_step()
    finally:
        for handle in handles:
            handle.remove()
        _restore_stage_calls(encoders)
    if not any(p.with_grad for p in passes):
        raise ValueError(f"{type(model).__name__} made no encoder call with gradient: nothing to compare with")
    return passes


def _interleaved_ms(functions: list[Callable[[], None]], steps: int, warmup: int, device: torch.device) -> list[float]:
    """Fastest milliseconds of each function over ``steps`` rounds, timed in turn round by round.

    Other processes can only add time, so the fastest run is the least disturbed one; alternating
    the functions makes a slow phase of the machine hit all of them alike, and rotating which one
    goes first in each round removes any advantage of a fixed position.
    """

    def once(fn: Callable[[], None]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1000.0

    for _ in range(warmup):
        for fn in functions:
            fn()
    best = [math.inf] * len(functions)
    for round_ in range(steps):
        for offset in range(len(functions)):
            i = (round_ + offset) % len(functions)
            best[i] = min(best[i], once(functions[i]))
    return best


MAX_SYNTHETIC_BYTES = 2**32  # the random images bench times on; 4 GiB is 100x what its default needs


def check_bench_sizes(batch_size: int, steps: int, image_size: int, warmup: int) -> None:
    """One line for sizes that cannot be timed: no step (the times would be inf and nan), a batch batch norm
    cannot train on, or more synthetic images than ``MAX_SYNTHETIC_BYTES``."""
    for flag, value, least in (("--steps", steps, 1), ("--batch-size", batch_size, 2), ("--image-size", image_size, 1)):
        if value < least:
            raise ValueError(f"bench {flag} must be at least {least}, got {value}")
    size = batch_size * (steps + warmup + 1) * 3 * image_size**2
    if size > MAX_SYNTHETIC_BYTES:
        raise ValueError(f"bench would time {size / 2**30:.0f} GiB of synthetic images (more than "
                         f"{MAX_SYNTHETIC_BYTES / 2**30:.0f}): use fewer --steps, a smaller --batch-size or --image-size")


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
    """Time ``steps`` training steps of ``method`` and of its backbone passes alone, alternating step by step."""
    check_bench_sizes(batch_size, steps, image_size, warmup)
    data = synthetic_images(batch_size * (steps + warmup + 1), image_size)
    cfg = make_config(
        method, "synthetic", data, overrides={"backbone": {"name": backbone}}, assignments=assignments, fit_to_run=False
    )
    if compile_target(cfg["train"]["compile"]) == "backbone":
        raise ValueError("selfsup bench compiles the whole step or nothing: use --set train.compile=step")
    dev = resolve_device(device if device != "auto" else cfg["train"]["device"])
    numerics = resolve_numerics(cfg["train"], dev, data)
    bf16, channels_last = numerics.bf16, numerics.channels_last
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    check_model_size(cfg, data)
    seed_everything(0)
    model = build_method(cfg, data, steps_per_epoch=steps + warmup + 1).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    views = build_views(cfg["views"], data.channels, data.input_size, data.mean, data.std)
    optimizer = build_optimizer(model.param_groups(), cfg["optim"], batch_size)
    backbone_optimizer = torch.optim.SGD(model.encoder.parameters(), lr=1e-6, momentum=0.9)
    batch = data.data[:batch_size].to(dev)
    labels = data.labels[:batch_size].to(dev)
    indices = torch.arange(batch_size, device=dev)
    encoder_grads = [torch.zeros_like(p) for p in model.encoder.parameters()]
    step = [0]
    eager = StepForward(model, model, views, torch.float32, bf16, channels_last)
    timed = build_step_forward(model, model, views, cfg["train"], torch.float32, bf16, channels_last)

    def method_step(replayed: bool = False, forward: Callable = eager) -> None:
        _, loss, _ = forward(batch, labels, indices)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if replayed:  # the optimizer updates the encoder as in a real step
            for parameter, grad in zip(model.encoder.parameters(), encoder_grads):
                parameter.grad = grad
        model.on_after_backward(step[0])
        optimizer.step()
        model.on_step_end(step[0], steps + warmup + 1)
        step[0] += 1

    passes = record_backbone_passes(model, method_step)
    fixed_views = [v.detach() for v in views(batch)]
    if channels_last:
        fixed_views = [v.contiguous(memory_format=torch.channels_last) for v in fixed_views]

    def backbone_passes(plan: list[BackbonePass]) -> Callable[[], None]:
        def run() -> None:
            loss = 0.0
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                for p in plan:
                    if p.with_grad:
                        loss = loss + model.encoder(p.inputs).float().mean()
                    else:
                        with torch.no_grad():
                            model.encoder(p.inputs)
            backbone_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            backbone_optimizer.step()

        return run

    def machinery_step() -> None:
        with replaying(model, passes):
            method_step(replayed=True)

    two_views = [BackbonePass(v, True) for v in fixed_views]
    step_ms, backbone_ms, two_view_ms, machinery_ms = _interleaved_ms(
        [lambda: method_step(forward=timed), backbone_passes(passes), backbone_passes(two_views), machinery_step],
        steps, warmup, dev,
    )
    result = {
        "method": method,
        "backbone": backbone,
        "batch_size": batch_size,
        "image_size": image_size,
        "views": len(fixed_views),
        "backbone_passes": [
            f"{'fwd+bwd' if p.with_grad else 'fwd'} {'x'.join(map(str, p.inputs.shape))}" for p in passes
        ],
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "precision": "bf16" if bf16 else "fp32",
        "compile": compile_target(cfg["train"]["compile"]),
        "images_per_s": batch_size / step_ms * 1000.0,
        "step_ms": step_ms,
        "backbone_ms": backbone_ms,
        "overhead": step_ms / backbone_ms,
        "machinery_ms": machinery_ms,
        "overhead_from_parts": (backbone_ms + machinery_ms) / backbone_ms,
        "two_view_ms": two_view_ms,
        "overhead_vs_two_views": step_ms / two_view_ms,
    }
    if dev.type == "cuda":
        result["memory_peak_gb"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return result


def overhead_sentence(method: str, backbone: str, result: dict[str, Any]) -> str:
    """``bench``'s result as one sentence: the step against the method's own backbone passes, and its parts."""
    return (
        f"{method}: overhead {result['overhead']:.3f} x its own backbone passes on the bare {backbone} "
        f"({result['step_ms']:.1f} ms per step vs {result['backbone_ms']:.1f} ms: "
        f"{', '.join(result['backbone_passes'])}); machinery alone {result['machinery_ms']:.1f} ms, "
        f"{result['overhead_from_parts']:.3f} x from the parts; {result['overhead_vs_two_views']:.3f} x one fwd+bwd "
        f"per view ({result['two_view_ms']:.1f} ms); {result['device']}, {result['precision']}"
    )
