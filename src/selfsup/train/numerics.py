"""How a run computes: its precision (``train.precision``) and its images' memory layout (``train.channels_last``).

``auto`` (both keys' default) takes the fast path where the hardware has one:
- on a GPU: bf16 autocast, images channels-last;
- on a CPU, for images larger than the recipe's small-image side (28 px, the ResNet regime): channels-last, and
  bf16 autocast where the CPU computes bf16 natively (AVX-512 BF16 or AMX). On this project's AVX-512 BF16 CPU a
  ResNet-18 step ran 2.2x faster than fp32 NCHW (benchmarks/RESULTS.md, "selfsup beside lightly");
- otherwise (small images such as 8 px digits, sequences, a CPU without bf16): fp32, NCHW, as before.
Under bf16 autocast the convolutions and matrix products run in bf16 while the weights, the optimizer and
batch norm's statistics stay fp32 (torch.autocast); ``fp32`` and ``fp64`` compute in that dtype throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from selfsup.config.recipe_rules import SMALL_IMAGE_SIDE
from selfsup.data.base import ArrayDataset

PRECISIONS = ("auto", "bf16", "fp32", "fp64")


@dataclass(frozen=True)
class Numerics:
    bf16: bool  # autocast to bf16 around the step's forward
    dtype: torch.dtype  # the parameters' and inputs' dtype
    channels_last: bool  # images and convolution weights in NHWC


def cpu_has_native_bf16() -> bool:
    """True where oneDNN runs bf16 convolutions and matrix products in hardware (AVX-512 BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def resolve_numerics(train: dict[str, Any], device: torch.device, data: ArrayDataset) -> Numerics:
    """``train.precision`` and ``train.channels_last`` for this device and data, ``auto`` resolved."""
    precision = train["precision"]
    if precision not in PRECISIONS:
        raise ValueError(f"unknown train.precision '{precision}'; use {', '.join(PRECISIONS)}")
    images = data.kind == "image"
    on_gpu = device.type == "cuda"
    fast_cpu = device.type == "cpu" and images and data.input_size > SMALL_IMAGE_SIDE
    bf16 = precision == "bf16" or (precision == "auto" and (on_gpu or (fast_cpu and cpu_has_native_bf16())))
    channels_last = train["channels_last"] is True or (train["channels_last"] == "auto" and (on_gpu or fast_cpu))
    dtype = torch.float64 if precision == "fp64" else torch.float32
    return Numerics(bf16=bf16, dtype=dtype, channels_last=channels_last and images)


def describe_cpu_autocast(numerics: Numerics, train: dict[str, Any], device: torch.device) -> str | None:
    """The one line that says a CPU run chose bf16 by itself, and how to turn it off; None otherwise."""
    if device.type != "cpu" or not numerics.bf16 or train["precision"] != "auto":
        return None
    return ("training in bf16 autocast on this CPU (train.precision=auto: it computes bf16 natively); "
            "--set train.precision=fp32 for fp32")
