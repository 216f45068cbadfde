"""Batched sequence views on the device: each sample of a ``[B, C, T]`` batch gets its own random parameters.

Operations, in this order, on normalised series ((x - mean) / std per channel):
- crop: a random sub-sequence. ``crop_scale=(lo, hi)`` keeps a uniformly drawn fraction of the
  length at a uniform start and resizes it back to ``length`` by linear interpolation;
  ``crop_length=L`` instead cuts a fixed window of L samples with no resizing (CPC's audio
  windows, van den Oord et al. 2018: 20480 samples).
- scaling: multiply each sample and channel by a factor ~ N(1, scale_std) (Um et al. 2017; TS-TCC's weak view).
- jitter: add N(0, jitter_std^2) noise to every value (Um et al. 2017; TS-TCC).
- channel permutation: with probability ``permute_prob`` shuffle the channels of a sample
  (only meaningful when channels are interchangeable, e.g. sensors of the same kind).

Presets (names start with "sequence"); any key can be overridden from the ``views`` config section.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

PRESETS: dict[str, dict[str, Any]] = {
    # CPC needs one view: the whole (normalised) series; its negatives are other samples' latents.
    "sequence_cpc": {
        "num_views": 1, "crop_scale": (1.0, 1.0), "crop_length": None,
        "scale_std": 0.0, "jitter_std": 0.0, "permute_prob": 0.0,
    },
    # Two views for contrastive / distillation methods on series: crop, scaling and jitter.
    "sequence_two_views": {
        "num_views": 2, "crop_scale": (0.5, 1.0), "crop_length": None,
        "scale_std": 0.1, "jitter_std": 0.05, "permute_prob": 0.0,
    },
}
PRESETS["sequence"] = PRESETS["sequence_two_views"]


def normalize(batch: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(x - mean) / std per channel, in float32; for evaluation without augmentation."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=batch.device).view(1, -1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=batch.device).view(1, -1, 1)
    return (batch.float() - mean_t) / std_t


def random_crop_resize(x: Tensor, scale: tuple[float, float], length: int) -> Tensor:
    """Keep a fraction ~ U(scale) of each series at a uniform start; resample it to ``length`` steps."""
    b, c, t = x.shape
    fraction = torch.empty(b, device=x.device).uniform_(*scale)
    span = (fraction * (t - 1)).clamp(min=0.0)
    start = torch.rand(b, device=x.device) * (t - 1 - span)
    grid = torch.linspace(0.0, 1.0, length, device=x.device)
    positions = start[:, None] + span[:, None] * grid[None]  # [B, length], in input steps
    left = positions.floor().long().clamp(0, t - 1)
    right = (left + 1).clamp(max=t - 1)
    weight = (positions - left).unsqueeze(1)
    gather = lambda idx: x.gather(2, idx.unsqueeze(1).expand(b, c, length))  # noqa: E731
    return gather(left) * (1 - weight) + gather(right) * weight


def random_window(x: Tensor, crop_length: int) -> Tensor:
    """A window of ``crop_length`` consecutive steps at a uniform start per sample."""
    b, c, t = x.shape
    if crop_length > t:
        raise ValueError(f"views.crop_length={crop_length} is longer than the series ({t} steps); choose at most {t}")
    start = torch.randint(0, t - crop_length + 1, (b,), device=x.device)
    idx = start[:, None] + torch.arange(crop_length, device=x.device)[None]
    return x.gather(2, idx.unsqueeze(1).expand(b, c, crop_length))


def random_scaling(x: Tensor, std: float) -> Tensor:
    return x * (1.0 + std * torch.randn(x.shape[0], x.shape[1], 1, device=x.device))


def jitter(x: Tensor, std: float) -> Tensor:
    return x + std * torch.randn_like(x)


def random_channel_permutation(x: Tensor, prob: float) -> Tensor:
    b, c, _ = x.shape
    order = torch.rand(b, c, device=x.device).argsort(dim=1)
    keep = torch.rand(b, device=x.device) >= prob
    order[keep] = torch.arange(c, device=x.device)
    return x.gather(1, order.unsqueeze(2).expand_as(x))


class SequenceViews:
    """``maker(batch [B, C, T]) -> list of num_views tensors``, each with fresh per-sample randomness."""

    def __init__(self, params: dict[str, Any], channels: int, length: int, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"sequence views: mean/std have {len(mean)}/{len(std)} entries for {channels} channels")
        lo, hi = params["crop_scale"]
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"views.crop_scale must satisfy 0 < lo <= hi <= 1, got {params['crop_scale']}")
        self.params = params
        self.num_views = int(params["num_views"])
        self.channels, self.length = channels, length
        self.mean, self.std = tuple(mean), tuple(std)

    def view(self, x: Tensor) -> Tensor:
        p = self.params
        if p["crop_length"]:
            x = random_window(x, int(p["crop_length"]))
        elif tuple(p["crop_scale"]) != (1.0, 1.0):
            x = random_crop_resize(x, tuple(p["crop_scale"]), self.length)
        if p["scale_std"] > 0:
            x = random_scaling(x, p["scale_std"])
        if p["jitter_std"] > 0:
            x = jitter(x, p["jitter_std"])
        if p["permute_prob"] > 0 and self.channels > 1:
            x = random_channel_permutation(x, p["permute_prob"])
        return x

    def __call__(self, batch: Tensor) -> list[Tensor]:
        if batch.ndim != 3 or batch.shape[1] != self.channels:
            raise ValueError(f"sequence views expect [batch, {self.channels}, length] series, got shape {tuple(batch.shape)}")
        x = normalize(batch, self.mean, self.std)
        return [self.view(x) for _ in range(self.num_views)]


def build_sequence_views(
    cfg_views: dict[str, Any], channels: int, length: int, mean: Sequence[float], std: Sequence[float]
) -> SequenceViews:
    """The maker for ``cfg_views = {"preset": NAME, ...overrides}`` (NAME one of ``PRESETS``)."""
    name = cfg_views.get("preset") or "sequence"
    if name not in PRESETS:
        raise ValueError(f"unknown sequence view preset '{name}'; choose one of: {', '.join(PRESETS)}")
    unknown = set(cfg_views) - set(PRESETS[name]) - {"preset"}
    if unknown:
        raise ValueError(f"unknown sequence view settings {sorted(unknown)}; known: {', '.join(PRESETS[name])}")
    params = {**PRESETS[name], **{k: v for k, v in cfg_views.items() if k != "preset"}}
    return SequenceViews(params, channels, length, mean, std)
