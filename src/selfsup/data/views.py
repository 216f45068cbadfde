"""Augmented views made batched on the training device, one random draw per sample.

``build_views(cfg_views, channels, image_size, mean, std)`` returns a ``ViewMaker``:
``maker(batch_uint8) -> [view_1, view_2, ...]`` (float32, normalised, on the batch's device).
A view is: random resized crop (+ horizontal flip, in the same resampling) -> colour jitter
(probability ``jitter_p``, torchvision semantics, random order per sample) -> random grayscale ->
Gaussian blur -> solarization -> normalisation.

Presets follow the papers; every key of a preset can be overridden from the ``views`` config
section (``--set views.blur_p=0.5``). Keys that differ between views (BYOL's asymmetric blur
and solarization) take a list with one value per global view.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

import torch
from torch import Tensor

from selfsup.data import ops

SIMCLR_JITTER = {"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2}  # x colour strength
MOCO_V1_JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.4}
MOCO_V2_JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}
BYOL_JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1}


def _strength(s: float) -> dict[str, float]:
    return {key: value * s for key, value in SIMCLR_JITTER.items()}


PRESETS: dict[str, dict[str, Any]] = {
    # SimCLR (Chen et al. 2020), Appendix A: crop (0.08, 1), flip, jitter strength 1.0 with p 0.8,
    # grayscale p 0.2, blur p 0.5 with sigma in (0.1, 2.0) and a kernel of 10% of the image.
    "simclr": {**_strength(1.0), "gray_p": 0.2, "blur_p": 0.5},
    # SimCLR Appendix B.9 (CIFAR-10): strength 0.5, no blur.
    "simclr_cifar": {**_strength(0.5), "gray_p": 0.2},
    # MoCo v1 (He et al. 2020) Sec. 3.3, after InstDisc: crop (0.2, 1), grayscale, jitter 0.4 always, flip.
    # (Their code applies grayscale before the jitter; here it comes after, as in every later preset.)
    "mocov1": {"scale": (0.2, 1.0), **MOCO_V1_JITTER, "jitter_p": 1.0, "gray_p": 0.2},
    # MoCo v2 (Chen et al. 2020, arXiv:2003.04297): + blur p 0.5, jitter (0.4, 0.4, 0.4, 0.1) p 0.8.
    "mocov2": {"scale": (0.2, 1.0), **MOCO_V2_JITTER, "gray_p": 0.2, "blur_p": 0.5},
    "mocov2_cifar": {"scale": (0.2, 1.0), **MOCO_V2_JITTER, "gray_p": 0.2},
    # BYOL (Grill et al. 2020) Table 6: blur p 1.0 / 0.1 and solarization p 0.0 / 0.2 for the two views.
    "byol": {**BYOL_JITTER, "gray_p": 0.2, "blur_p": [1.0, 0.1], "solarize_p": [0.0, 0.2]},
    # solo-learn's CIFAR BYOL: no blur at 32 px, solarization kept.
    "byol_cifar": {**BYOL_JITTER, "gray_p": 0.2, "solarize_p": [0.0, 0.2]},
    # SwAV (Caron et al. 2020) Sec. 4 / Appendix A: 2 x 224 crops (0.14, 1) + 6 x 96 crops (0.05, 0.14),
    # SimCLR colour (strength 1.0) and blur on every crop.
    # Small crops are 96/224 of the global side (96 px at 224).
    "swav": {"scale": (0.14, 1.0), **_strength(1.0), "gray_p": 0.2, "blur_p": 0.5,
             "small_crops": 6, "small_scale": (0.05, 0.14)},
    # The same crop geometry scaled to 32 px (96/224 of the side -> 16 px), CIFAR colour strength, no blur.
    "swav_cifar": {"scale": (0.14, 1.0), **_strength(0.5), "gray_p": 0.2,
                   "small_crops": 6, "small_size": 16, "small_scale": (0.05, 0.14)},
    # InstDisc (Wu et al. 2018) Sec. 4: crop (0.2, 1), grayscale 0.2, jitter 0.4 always, flip.
    "instdisc": {"scale": (0.2, 1.0), **MOCO_V1_JITTER, "jitter_p": 1.0, "gray_p": 0.2},
    # Small grayscale images (8 px digits, 28 px glyphs): crops keep at least half the image (smaller
    # ones lose the stroke that tells 1 from 7), no flip (it turns 2 into a mirrored glyph and mixes
    # classes), brightness and contrast only (one channel: saturation, hue and grayscale do not exist).
    "grayscale": {"scale": (0.5, 1.0), "flip_p": 0.0, "brightness": 0.4, "contrast": 0.4, "saturation": 0.0,
               "hue": 0.0, "jitter_p": 0.8},
}

COLOUR_KEYS = ("saturation", "hue", "gray_p")


@dataclass(frozen=True)
class ViewSpec:
    """How one view is made; defaults are SimCLR's geometry with every optional operation off."""

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    jitter_p: float = 0.8
    gray_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 0  # 0: 10% of the view size, odd
    solarize_p: float = 0.0

    @property
    def jitters(self) -> bool:
        return self.jitter_p > 0 and any((self.brightness, self.contrast, self.saturation, self.hue))


SPEC_KEYS = {f.name for f in fields(ViewSpec)}
RANGE_KEYS = {"scale", "ratio", "blur_sigma"}
MAKER_KEYS = {"preset", "num_views", "strength", "small_crops", "small_size", "small_scale"}


class ViewMaker:
    """Turns a uint8 batch [B, C, H, W] into a list of normalised float32 views on the same device."""

    def __init__(self, specs: Sequence[ViewSpec], mean: Sequence[float], std: Sequence[float]):
        self.specs = list(specs)
        self._groups = [(spec, len(list(group))) for spec, group in itertools.groupby(self.specs)]
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._normalizer: tuple[Tensor, Tensor] | None = None  # (scale, shift) on the last batch's device

    @property
    def num_views(self) -> int:
        return len(self.specs)

    def __call__(self, batch: Tensor) -> list[Tensor]:
        """Views made like ones (e.g. SimCLR's two) in one pass over the repeated batch: half the op calls."""
        images = to_float(batch)
        views: list[Tensor] = []
        for spec, count in self._groups:
            repeated = images if count == 1 else images.repeat(count, 1, 1, 1)
            views += self.view(repeated, spec).chunk(count)
        return views

    def view(self, images: Tensor, spec: ViewSpec) -> Tensor:
        """One view of float images in [0, 1]."""
        n, _, height, width = images.shape
        device = images.device
        boxes = ops.sample_crop_boxes(n, height, width, spec.scale, spec.ratio, device)
        flip = ops.bernoulli(n, spec.flip_p, device) if spec.flip_p > 0 else None
        x = ops.resized_crop(images, boxes, spec.size, flip)
        if spec.jitters:
            x = ops.color_jitter(x, *jitter_parameters(spec, n, device))
        if spec.gray_p > 0:
            x = ops.grayscale(x, ops.bernoulli(n, spec.gray_p, device))
        if spec.blur_p > 0:
            blurred = ops.bernoulli(n, spec.blur_p, device)
            sigma = torch.where(blurred, ops.uniform(n, *spec.blur_sigma, device), torch.full((n,), 1e-3, device=device))
            x = ops.gaussian_blur(x, sigma, spec.blur_kernel or ops.blur_kernel_size(spec.size))
        if spec.solarize_p > 0:
            x = ops.solarize(x, ops.bernoulli(n, spec.solarize_p, device))
        if self._normalizer is None or self._normalizer[0].device != x.device:
            self._normalizer = ops.normalizer(self.mean, self.std, x.device)
        return ops.normalize_with(x, *self._normalizer)


def jitter_parameters(spec: ViewSpec, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Per-sample (factors [n, 4], order [n, 4]) as ColorJitter.get_params; identity where not applied."""
    factors = torch.stack(
        [
            ops.uniform(n, max(0.0, 1 - spec.brightness), 1 + spec.brightness, device),
            ops.uniform(n, max(0.0, 1 - spec.contrast), 1 + spec.contrast, device),
            ops.uniform(n, max(0.0, 1 - spec.saturation), 1 + spec.saturation, device),
            ops.uniform(n, -spec.hue, spec.hue, device),
        ],
        dim=1,
    )
    identity = (torch.arange(4, device=device) < 3).to(factors.dtype)  # (1, 1, 1, 0), made on the device
    factors = torch.where(ops.bernoulli(n, spec.jitter_p, device)[:, None], factors, identity)
    order = torch.rand(n, 4, device=device).argsort(dim=1)
    return factors, order


def to_float(batch: Tensor) -> Tensor:
    """uint8 [0, 255] -> float32 [0, 1]."""
    if batch.dtype != torch.uint8:
        raise ValueError(f"views expect uint8 images, got {batch.dtype}")
    return batch.to(torch.float32).mul_(1.0 / 255.0)


def normalize(batch: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """The evaluation view: uint8 [B, C, H, W] -> float32 (x / 255 - mean) / std."""
    return ops.normalize(to_float(batch), mean, std)


def _per_view(key: str, value: Any, num_views: int) -> list[Any]:
    if isinstance(value, (list, tuple)) and key not in RANGE_KEYS:
        if len(value) != num_views:
            raise ValueError(f"views.{key} has {len(value)} values but there are {num_views} views")
        return list(value)
    return [tuple(value) if key in RANGE_KEYS else value] * num_views


def resolve(cfg_views: dict[str, Any]) -> dict[str, Any]:
    """The preset's settings with the config's overrides applied (``strength`` rescales SimCLR's jitter)."""
    name = cfg_views.get("preset")
    if name not in PRESETS:
        raise ValueError(f"unknown view preset '{name}'; choose one of: {', '.join(PRESETS)} or sequence*")
    overrides = {k: v for k, v in cfg_views.items() if k != "preset" and v is not None}
    unknown = set(overrides) - SPEC_KEYS - MAKER_KEYS
    if unknown:
        raise ValueError(f"unknown views key(s) {sorted(unknown)}; valid: {sorted((SPEC_KEYS | MAKER_KEYS) - {'preset'})}")
    settings = {**PRESETS[name]}
    if "strength" in overrides:
        settings.update(_strength(float(overrides.pop("strength"))))
    settings.update(overrides)
    return settings


def build_views(cfg_views: dict[str, Any], channels: int, image_size: int, mean: Sequence[float], std: Sequence[float]):
    """The view maker of a ``views`` config section for images with ``channels`` and side ``image_size``.

    A preset whose name starts with 'sequence' is built by ``selfsup.data.sequence_views``
    (``image_size`` is then the sequence length).
    """
    name = str(cfg_views.get("preset"))
    if name.startswith("sequence"):
        from selfsup.data.sequence_views import build_sequence_views

        return build_sequence_views(cfg_views, channels, image_size, mean, std)
    settings = resolve(cfg_views)
    num_views = int(settings.pop("num_views", 2))
    small_crops = int(settings.pop("small_crops", 0))
    small_scale = tuple(settings.pop("small_scale", (0.05, 0.14)))
    settings.setdefault("size", image_size)
    small_size = int(settings.pop("small_size", max(1, round(settings["size"] * 96 / 224))))
    if channels != 3:
        colour = [k for k in COLOUR_KEYS if any(_per_view(k, settings.get(k, 0), num_views))]
        if colour:
            raise ValueError(
                f"view preset '{name}' needs 3-channel images ({', '.join(colour)}); the dataset has {channels} "
                f"channel(s): choose views.preset=grayscale or set " + ", ".join(f"views.{key}=0" for key in colour)
            )
    per_key = {key: _per_view(key, value, num_views) for key, value in settings.items()}
    specs = [ViewSpec(**{key: values[i] for key, values in per_key.items()}) for i in range(num_views)]
    if small_crops:
        small = replace(specs[0], size=small_size, scale=small_scale)
        specs += [small] * small_crops
    return ViewMaker(specs, mean, std)
