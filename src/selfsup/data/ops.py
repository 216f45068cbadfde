"""Batched image operations on float images in [0, 1], shape [B, C, H, W], each sample with its own parameters.

Every function works on whatever device the batch is on and has no Python loop over samples.
Semantics follow torchvision's tensor transforms (ColorJitter, RandomResizedCrop, GaussianBlur,
RandomSolarize, Grayscale), so presets written for torchvision mean the same thing here.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as torchvision's rgb_to_grayscale
CROP_TRIES = 10


def uniform(n: int, low: float, high: float, device: torch.device) -> Tensor:
    return torch.empty(n, device=device).uniform_(low, high)


def bernoulli(n: int, p: float, device: torch.device) -> Tensor:
    """Boolean mask [n], True with probability p."""
    return torch.rand(n, device=device) < p


def sample_crop_boxes(
    n: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], device: torch.device
) -> Tensor:
    """Boxes [n, 4] = (x0, y0, w, h) in pixels, as RandomResizedCrop.get_params but continuous.

    area ~ U(scale) * H * W, log(aspect) ~ U(log ratio); the first of ``CROP_TRIES`` draws that fits
    wins, samples where none fits fall back to the whole image. The position is uniform.
    """
    area = torch.empty(n, CROP_TRIES, device=device).uniform_(*scale) * (height * width)
    log_r = torch.empty(n, CROP_TRIES, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = log_r.exp()
    w = (area * aspect).sqrt()
    h = (area / aspect).sqrt()
    fits = (w <= width) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)
    any_fit = fits.any(dim=1)
    w = torch.where(any_fit, w.gather(1, first).squeeze(1), torch.full_like(any_fit, width, dtype=w.dtype))
    h = torch.where(any_fit, h.gather(1, first).squeeze(1), torch.full_like(any_fit, height, dtype=h.dtype))
    x0 = torch.rand(n, device=device) * (width - w)
    y0 = torch.rand(n, device=device) * (height - h)
    return torch.stack([x0, y0, w, h], dim=1)


def resized_crop(images: Tensor, boxes: Tensor, size: int, flip: Tensor | None = None) -> Tensor:
    """Crop each box and resize it to ``size`` x ``size`` with bilinear interpolation, mirrored where ``flip``.

    One ``grid_sample`` for the whole batch: output pixel centres are mapped affinely into the box
    (pixel-edge convention, as ``interpolate(..., align_corners=False)``), negating x for flipped samples.
    The sampling grid is separable, so it is built from two [n, size] vectors (no ``affine_grid``).
    """
    n, _, height, width = images.shape
    x0, y0, w, h = boxes.unbind(1)
    sx = w / width
    if flip is not None:
        sx = torch.where(flip, -sx, sx)
    centres = (torch.arange(size, device=images.device, dtype=images.dtype) + 0.5) * (2.0 / size) - 1.0
    grid_x = torch.addcmul(((2 * x0 + w) / width - 1)[:, None], sx[:, None], centres)  # [n, size]
    grid_y = torch.addcmul(((2 * y0 + h) / height - 1)[:, None], (h / height)[:, None], centres)
    grid = torch.stack([grid_x[:, None, :].expand(n, size, size), grid_y[:, :, None].expand(n, size, size)], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def luma(images: Tensor) -> Tensor:
    """Grayscale [B, 1, H, W] = 0.299 R + 0.587 G + 0.114 B (a single channel is its own luma)."""
    if images.shape[1] == 1:
        return images
    r, g, b = images.split(1, dim=1)
    return torch.add(r * LUMA[0], g, alpha=LUMA[1]).add_(b, alpha=LUMA[2])


def blend_stage(images: Tensor, factor: Tensor, to_mean: Tensor, to_gray: Tensor) -> Tensor:
    """One ColorJitter stage for the whole batch: ``clamp(f * x + (1 - f) * target, 0, 1)``.

    target is 0 (brightness), the image's mean luma (contrast, where ``to_mean``) or its luma image
    (saturation, where ``to_gray``); ``factor`` [B] is 1 for samples whose stage is something else.
    """
    gray = luma(images)
    mean = gray.mean(dim=(2, 3), keepdim=True)
    to_gray, to_mean = (m.to(images.dtype).view(-1, 1, 1, 1) for m in (to_gray, to_mean))
    target = torch.addcmul(mean * to_mean, gray, to_gray)
    return torch.lerp(target, images, factor.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def _hue6_chroma(images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(6 * hue in [-1, 5), max, max - min) per pixel, the HSV decomposition torchvision uses.

    hue6 = (G - B) / C where R is the max, 2 + (B - R) / C where G is, 4 + (R - G) / C otherwise.
    Branches are arithmetic on 0/1 masks: ``torch.where`` with a full-size mask is much slower on CPU.
    """
    maxc = images.amax(dim=1, keepdim=True)
    chroma = maxc - images.amin(dim=1, keepdim=True)
    r, g, b = images.split(1, dim=1)
    is_r = (r == maxc).to(images.dtype)
    is_g = (g == maxc).to(images.dtype).mul_(1.0 - is_r)
    is_b = 1.0 - is_r - is_g
    numerator = is_r * (g - b)
    numerator.addcmul_(is_g, (b - r).add_(chroma, alpha=2.0)).addcmul_(is_b, (r - g).add_(chroma, alpha=4.0))
    return numerator.div_(chroma.clamp_min(1e-12)), maxc, chroma


def _rgb_from_hue6(hue6: Tensor, value: Tensor, chroma: Tensor) -> Tensor:
    """RGB from 6 * hue (any real), value and chroma.

    A channel is at V within 1 (of 6) hue units of its own hue (R 0, G 2, B 4), falls linearly to
    V - C between 1 and 2 units, and stays there: c = V - C * clamp(d - 1, 0, 1), d the circular
    distance. With h in [0, 6), |h - 2| and |h - 4| are off the circular distance only where both
    exceed 2, so only red needs the wrap-around.
    """
    h = torch.remainder(hue6, 6.0)
    distances = (torch.minimum(h, 6.0 - h), (h - 2.0).abs_(), (h - 4.0).abs_())
    return torch.cat([torch.addcmul(value, chroma, d.sub_(1.0).clamp_(0.0, 1.0), value=-1.0) for d in distances], 1)


def rgb_to_hsv(images: Tensor) -> Tensor:
    """[B, 3, H, W] RGB -> HSV with every channel in [0, 1] (hue 0 = red)."""
    hue6, value, chroma = _hue6_chroma(images)
    saturation = chroma / value.clamp_min(1e-12)
    return torch.cat([torch.remainder(hue6 / 6.0, 1.0), saturation, value], dim=1)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    hue, saturation, value = hsv.split(1, dim=1)
    return _rgb_from_hue6(hue * 6.0, value, saturation * value)


def adjust_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate hue by ``shift`` [B] (fraction of a turn, torchvision's hue_factor), keeping S and V."""
    hue6, value, chroma = _hue6_chroma(images)
    return _rgb_from_hue6(hue6 + 6.0 * shift.view(-1, 1, 1, 1), value, chroma)


def color_jitter(images: Tensor, factors: Tensor, order: Tensor, select_hue: bool | None = None) -> Tensor:
    """torchvision's ColorJitter with per-sample factors and per-sample order.

    factors: [B, 4] = (brightness, contrast, saturation, hue shift); (1, 1, 1, 0) is the identity.
    order: [B, 4] a permutation of 0..3 (brightness, contrast, saturation, hue) per sample.
    Brightness, contrast and saturation are blends (``blend_stage``). Hue, at each stage, is applied
    either to the samples whose stage it is only, gathered by index (``select_hue``, the default on
    the CPU: each image pays for one hue rotation at most), or to the whole batch and kept where it
    is the sample's stage (the default elsewhere and under torch.compile: finding the samples is a
    ``nonzero``, which makes the host wait for the device and gives a compiled graph a data-dependent
    size, and four rotations of a small batch cost less than that). Both give the same images.
    """
    if select_hue is None:
        select_hue = images.device.type == "cpu" and not torch.compiler.is_compiling()
    out = images
    for stage in range(4):
        op = order[:, stage]
        factor = torch.where(op == 3, torch.ones_like(factors[:, 0]), factors.gather(1, op.clamp(max=2)[:, None])[:, 0])
        out = blend_stage(out, factor, to_mean=op == 1, to_gray=op == 2)
        hue_here = (op == 3) & (factors[:, 3] != 0)
        if not select_hue:
            out = torch.where(hue_here.view(-1, 1, 1, 1), adjust_hue(out, factors[:, 3]), out)
            continue
        rows = hue_here.nonzero().squeeze(1)
        if rows.numel():
            out[rows] = adjust_hue(out[rows], factors[rows, 3])
    return out


def grayscale(images: Tensor, mask: Tensor) -> Tensor:
    """Replace the samples where ``mask`` by their luma, repeated over the 3 channels."""
    return torch.lerp(images, luma(images), mask.to(images.dtype).view(-1, 1, 1, 1))


def blur_kernel_size(image_size: int, fraction: float = 0.1) -> int:
    """SimCLR's kernel: ``fraction`` of the image side, made odd, at least 3."""
    size = max(3, int(round(image_size * fraction)))
    return size if size % 2 == 1 else size + 1


def _reflect_blur_matrix(weights: Tensor, length: int) -> Tensor:
    """[B, L, L] matrices M with (x @ M)[j] = sum_t weights[t] x[reflect(j + t - K // 2)] along one axis."""
    half = weights.shape[1] // 2
    source = torch.arange(length, device=weights.device)[:, None] + torch.arange(-half, half + 1, device=weights.device)
    source = source.abs()
    source = torch.where(source >= length, 2 * (length - 1) - source, source)  # reflect padding, as F.pad
    one_hot = F.one_hot(source, length).to(weights.dtype)  # [L_out, K, L_in]
    return torch.einsum("bt,jti->bij", weights, one_hot)


def gaussian_blur(images: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur, ``sigma`` [B] per sample, reflect padding (torchvision's GaussianBlur).

    Each axis is one batched matrix product with a banded matrix that holds the sample's kernel and
    the padding, which is far faster than a grouped convolution with one group per image.
    A sigma near 0 gives a delta kernel, i.e. the identity, so unblurred samples need no separate path.
    """
    n, c, height, width = images.shape
    half = kernel_size // 2
    if half >= min(height, width):
        raise ValueError(f"blur kernel {kernel_size} is too large for {height}x{width} images: lower blur_kernel")
    t = torch.arange(-half, half + 1, device=images.device, dtype=images.dtype)
    weights = torch.exp(-(t**2)[None, :] / (2 * sigma.to(images.dtype)[:, None] ** 2))
    weights = weights / weights.sum(dim=1, keepdim=True)
    along_x = _reflect_blur_matrix(weights, width)[:, None]
    along_y = along_x if height == width else _reflect_blur_matrix(weights, height)[:, None]
    return along_y.transpose(-1, -2) @ (images @ along_x)


def solarize(images: Tensor, mask: Tensor) -> Tensor:
    """Invert pixels at or above 0.5 in the samples where ``mask``; for x in [0, 1] that is min(x, 1 - x)."""
    return torch.where(mask.view(-1, 1, 1, 1), torch.minimum(images, 1.0 - images), images)


def normalizer(mean: Sequence[float], std: Sequence[float], device: torch.device) -> tuple[Tensor, Tensor]:
    """(scale, shift) [1, C, 1, 1] with x * scale + shift = (x - mean) / std.

    Made from host numbers, so a copy to ``device``: build them once, not per batch (on a GPU each
    copy of host data makes the host wait for the device).
    """
    scale = 1.0 / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    shift = -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * scale
    return scale.to(device), shift.to(device)


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(x - mean) / std per channel for float images in [0, 1]."""
    return normalize_with(images, *normalizer(mean, std, images.device))


def normalize_with(images: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """x * scale + shift, with (scale, shift) from ``normalizer``."""
    return torch.addcmul(shift.to(images.dtype), images, scale.to(images.dtype))
