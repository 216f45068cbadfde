"""Batched views: each operation checked statistically on real photographs and against literal references."""

from __future__ import annotations

import colorsys
import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F

from selfsup.data import ops
from selfsup.data.views import PRESETS, ViewSpec, build_views, jitter_parameters, normalize

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def cifar() -> torch.Tensor:
    """400 CIFAR-size crops of real photographs, uint8 [400, 3, 32, 32].

    scikit-learn ships two photographs (427 x 640); each is shrunk by 3 (antialiased, so a 32-px crop holds
    a scene's worth of edges and colours, like a CIFAR image) and cut into 200 crops at seeded positions.
    """
    from sklearn.datasets import load_sample_images

    generator = torch.Generator().manual_seed(0)
    crops = []
    for photo in load_sample_images().images:
        image = torch.tensor(photo).permute(2, 0, 1).unsqueeze(0).float()
        small = F.interpolate(image, scale_factor=1 / 3, mode="bilinear", antialias=True).round().clamp(0, 255)
        _, _, height, width = small.shape
        ys = torch.randint(0, height - 32 + 1, (200,), generator=generator)
        xs = torch.randint(0, width - 32 + 1, (200,), generator=generator)
        crops += [small[0, :, y : y + 32, x : x + 32] for y, x in zip(ys.tolist(), xs.tolist())]
    return torch.stack(crops).to(torch.uint8)


def as_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


def ramp(n: int, size: int = 32) -> torch.Tensor:
    """Images whose value is the pixel-centre x coordinate (channel 0) and y coordinate (channel 1)."""
    coords = torch.arange(size, dtype=torch.float32)
    x = coords.view(1, 1, 1, size).expand(n, 1, size, size)
    y = coords.view(1, 1, size, 1).expand(n, 1, size, size)
    return torch.cat([x, y, torch.zeros_like(x)], dim=1).contiguous()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_gives_normalised_float_views_of_the_declared_sizes(name, cifar):
    channels, batch = (1, torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)) if name == "grayscale" else (3, cifar[:16])
    maker = build_views({"preset": name}, channels, batch.shape[-1], MEAN[:channels], STD[:channels])
    views = maker(batch)
    assert len(views) == maker.num_views >= 2
    for view, spec in zip(views, maker.specs):
        assert view.shape == (16, channels, spec.size, spec.size)
        assert view.dtype == torch.float32 and view.device == batch.device
        assert torch.isfinite(view).all()
    assert not torch.equal(views[0], views[1])


def test_swav_multicrop_has_two_global_and_six_small_crops(cifar):
    maker = build_views({"preset": "swav_cifar"}, 3, 32, MEAN, STD)
    sizes = [v.shape[-1] for v in maker(cifar[:8])]
    assert sizes == [32, 32] + [16] * 6
    assert maker.specs[2].scale == (0.05, 0.14) and maker.specs[0].scale == (0.14, 1.0)


def test_byol_views_are_asymmetric_and_overrides_apply():
    maker = build_views({"preset": "byol", "blur_p": [0.7, 0.3], "solarize_p": 0.1}, 3, 96, MEAN, STD)
    assert [s.blur_p for s in maker.specs] == [0.7, 0.3]
    assert [s.solarize_p for s in maker.specs] == [0.1, 0.1]
    default = build_views({"preset": "byol"}, 3, 224, MEAN, STD)
    assert [s.blur_p for s in default.specs] == [1.0, 0.1] and [s.solarize_p for s in default.specs] == [0.0, 0.2]
    assert default.specs[0].size == 224
    stronger = build_views({"preset": "simclr_cifar", "strength": 1.0}, 3, 32, MEAN, STD).specs[0]
    assert (stronger.brightness, stronger.hue) == (0.8, pytest.approx(0.2))


def test_bad_view_config_is_one_clear_error():
    with pytest.raises(ValueError, match="needs 3-channel images.*1 channel.*views.preset=grayscale"):
        build_views({"preset": "simclr_cifar"}, 1, 8, (0.5,), (0.2,))
    with pytest.raises(ValueError, match="unknown view preset 'nope'"):
        build_views({"preset": "nope"}, 3, 32, MEAN, STD)
    with pytest.raises(ValueError, match="unknown views key"):
        build_views({"preset": "simclr", "blurr_p": 0.5}, 3, 32, MEAN, STD)
    with pytest.raises(ValueError, match="3 values but there are 2 views"):
        build_views({"preset": "byol", "blur_p": [1, 0, 0]}, 3, 32, MEAN, STD)


def test_sequence_presets_are_delegated():
    maker = build_views({"preset": "sequence"}, 1, 64, (0.0,), (1.0,))
    assert type(maker).__module__ == "selfsup.data.sequence_views"


def test_crop_boxes_lie_in_the_image_with_area_and_aspect_in_range():
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    boxes = ops.sample_crop_boxes(20000, 32, 40, scale, ratio, torch.device("cpu"))
    x0, y0, w, h = boxes.unbind(1)
    area = w * h / (32 * 40)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 40 + 1e-4).all() and (y0 + h <= 32 + 1e-4).all()
    assert area.min() >= scale[0] - 1e-6 and area.max() <= scale[1] + 1e-6
    aspect = w / h
    fits = (aspect >= ratio[0] - 1e-5) & (aspect <= ratio[1] + 1e-5)
    assert fits.float().mean() > 0.99  # the rest fell back to the whole (40:32) image
    literal = [literal_crop_area(32, 40, scale, ratio, rng) for rng in [random.Random(0)] for _ in range(4000)]
    assert abs(area.mean().item() - sum(literal) / len(literal)) < 0.015  # rejected draws lower it below 0.54


def literal_crop_area(height, width, scale, ratio, rng) -> float:
    """torchvision's RandomResizedCrop.get_params area fraction, one sample at a time (continuous sizes)."""
    for _ in range(10):
        area = rng.uniform(*scale) * height * width
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = math.sqrt(area * aspect), math.sqrt(area / aspect)
        if w <= width and h <= height:
            return w * h / (height * width)
    return 1.0


def test_resized_crop_maps_output_pixels_into_the_box_bilinearly():
    images = ramp(64)
    boxes = ops.sample_crop_boxes(64, 32, 32, (0.1, 0.9), (0.75, 4 / 3), torch.device("cpu"))
    flip = torch.arange(64) % 2 == 1
    out = ops.resized_crop(images, boxes, 16, flip)
    x0, y0, w, h = boxes.unbind(1)
    i = torch.arange(16, dtype=torch.float32)
    expected_x = x0[:, None] + (i + 0.5) * w[:, None] / 16 - 0.5  # pixel-centre convention
    expected_x = torch.where(flip[:, None], expected_x.flip(1), expected_x).clamp(0, 31)
    expected_y = (y0[:, None] + (i + 0.5) * h[:, None] / 16 - 0.5).clamp(0, 31)
    torch.testing.assert_close(out[:, 0, 5, :], expected_x, atol=1e-3, rtol=0)
    torch.testing.assert_close(out[:, 1, :, 7], expected_y, atol=1e-3, rtol=0)


def test_resized_crop_equals_interpolate_and_exact_copies(cifar):
    images = as_float(cifar[:8])
    full = torch.tensor([[0.0, 0.0, 32.0, 32.0]]).repeat(8, 1)
    expected = F.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ops.resized_crop(images, full, 20), expected, atol=1e-5, rtol=0)
    box = torch.tensor([[3.0, 5.0, 12.0, 12.0]]).repeat(8, 1)
    torch.testing.assert_close(ops.resized_crop(images, box, 12), images[:, :, 5:17, 3:15], atol=1e-5, rtol=0)
    flipped = ops.resized_crop(images, box, 12, torch.ones(8, dtype=torch.bool))
    torch.testing.assert_close(flipped, images[:, :, 5:17, 3:15].flip(-1), atol=1e-5, rtol=0)


def test_flip_rate_and_per_sample_parameters():
    maker = build_views({"preset": "simclr_cifar", "scale": [1.0, 1.0], "brightness": 0, "contrast": 0,
                         "saturation": 0, "hue": 0, "gray_p": 0}, 3, 32, (0, 0, 0), (1, 1, 1))
    images = (ramp(4000) * 8).to(torch.uint8)
    view = maker(images)[0]
    flipped = view[:, 0, 0, 0] > view[:, 0, 0, -1]
    assert abs(flipped.float().mean().item() - 0.5) < 0.04
    boxes = ops.sample_crop_boxes(4000, 32, 32, (0.08, 1.0), (0.75, 4 / 3), torch.device("cpu"))
    assert len(torch.unique(boxes[:, 2])) > 3900  # every sample draws its own crop


def test_grayscale_rate_and_luma(cifar):
    images = as_float(cifar)
    mask = torch.rand(len(images)) < 0.2
    out = ops.grayscale(images, mask)
    literal = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]).unsqueeze(1).expand_as(images)
    torch.testing.assert_close(out[mask], literal[mask])
    torch.testing.assert_close(out[~mask], images[~mask])
    maker = build_views({"preset": "simclr_cifar", "brightness": 0, "contrast": 0, "saturation": 0, "hue": 0}, 3, 32,
                        (0, 0, 0), (1, 1, 1))
    batch = cifar.repeat(5, 1, 1, 1)
    view = maker(batch)[0]
    gray = (view.amax(1) - view.amin(1)).amax(dim=(1, 2)) < 1e-5
    colourful = (batch.float().amax(1) - batch.float().amin(1)).amax(dim=(1, 2)) > 10
    assert abs(gray[colourful].float().mean().item() - 0.2) < 0.05


def test_hsv_round_trips_and_matches_colorsys(cifar):
    images = as_float(cifar[:50])
    torch.testing.assert_close(ops.hsv_to_rgb(ops.rgb_to_hsv(images)), images, atol=1e-5, rtol=0)
    pixels = images[:2, :, :4, :4].permute(0, 2, 3, 1).reshape(-1, 3).tolist()
    literal = torch.tensor([colorsys.rgb_to_hsv(*p) for p in pixels])
    ours = ops.rgb_to_hsv(images[:2, :, :4, :4]).permute(0, 2, 3, 1).reshape(-1, 3)
    hue_gap = (ours[:, 0] - literal[:, 0]).abs()
    assert torch.minimum(hue_gap, 1 - hue_gap).max() < 1e-5
    torch.testing.assert_close(ours[:, 1:], literal[:, 1:], atol=1e-5, rtol=0)


def test_hue_shift_round_trips_and_matches_colorsys(cifar):
    images = as_float(cifar[:64])
    shift = torch.rand(64) - 0.5
    there_and_back = ops.adjust_hue(ops.adjust_hue(images, shift), -shift)
    torch.testing.assert_close(there_and_back, images, atol=1e-5, rtol=0)
    small = images[:3, :, :3, :3]
    out = ops.adjust_hue(small, shift[:3])
    for b, y, x in itertools.product(range(3), range(3), range(3)):
        h, s, v = colorsys.rgb_to_hsv(*small[b, :, y, x].tolist())
        expected = colorsys.hsv_to_rgb((h + shift[b].item()) % 1.0, s, v)
        torch.testing.assert_close(out[b, :, y, x], torch.tensor(expected), atol=1e-5, rtol=0)


def literal_jitter(image: torch.Tensor, factors: list[float], order: list[int]) -> torch.Tensor:
    """torchvision's ColorJitter on one image, written out op by op."""
    def gray(x):
        return 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]

    for op in order:
        f = factors[op]
        if op == 0:
            image = (image * f).clamp(0, 1)
        elif op == 1:
            image = (f * image + (1 - f) * gray(image).mean()).clamp(0, 1)
        elif op == 2:
            image = (f * image + (1 - f) * gray(image)).clamp(0, 1)
        elif f != 0:
            image = ops.adjust_hue(image[None], torch.tensor([f]))[0]
    return image


def test_colour_jitter_matches_the_literal_definition_in_every_order(cifar):
    images = as_float(cifar[:24])
    order = torch.tensor(list(itertools.permutations(range(4))))
    factors = torch.stack([torch.rand(24) * 1.6 + 0.2, torch.rand(24) * 1.6 + 0.2, torch.rand(24) * 1.6 + 0.2,
                           torch.rand(24) * 0.4 - 0.2], dim=1)
    out = ops.color_jitter(images.clone(), factors, order)
    for i in range(24):
        expected = literal_jitter(images[i], factors[i].tolist(), order[i].tolist())
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)


def test_colour_jitter_gives_the_same_images_whether_hue_selects_samples_or_masks_the_batch(cifar):
    images = as_float(cifar[:48])
    order = torch.tensor(list(itertools.permutations(range(4))) * 2)
    factors = torch.stack([torch.rand(48) + 0.5, torch.rand(48) + 0.5, torch.rand(48) + 0.5, torch.rand(48) - 0.5], 1)
    factors[::3, 3] = 0.0  # no hue shift: the masked path must leave these samples alone too
    selected = ops.color_jitter(images.clone(), factors, order, select_hue=True)
    masked = ops.color_jitter(images.clone(), factors, order, select_hue=False)
    torch.testing.assert_close(masked, selected, atol=1e-6, rtol=0)
    assert not torch.allclose(selected, ops.color_jitter(images.clone(), factors, order.flip(1), select_hue=True))


def test_jitter_parameters_have_colorjitter_ranges_probability_and_random_order():
    spec = ViewSpec(size=32, brightness=0.4, contrast=0.8, saturation=1.5, hue=0.1, jitter_p=0.8)
    factors, order = jitter_parameters(spec, 20000, torch.device("cpu"))
    applied = (factors != factors.new_tensor([1.0, 1.0, 1.0, 0.0])).any(dim=1)
    assert abs(applied.float().mean().item() - 0.8) < 0.02
    f = factors[applied]
    for column, (low, high) in enumerate([(0.6, 1.4), (0.2, 1.8), (0.0, 2.5), (-0.1, 0.1)]):
        assert f[:, column].min() >= low and f[:, column].max() <= high
        assert f[:, column].min() < low + 0.01 and f[:, column].max() > high - 0.01
    assert (order.sort(dim=1).values == torch.arange(4)).all()
    assert len({tuple(o) for o in order.tolist()}) == 24


def literal_blur(image: torch.Tensor, sigma: float, k: int) -> torch.Tensor:
    t = torch.arange(k, dtype=torch.float64) - k // 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = torch.outer(g, g) / g.sum() ** 2
    padded = F.pad(image[None].double(), (k // 2,) * 4, mode="reflect")[0]
    c, height, width = image.shape
    out = torch.zeros(c, height, width, dtype=torch.float64)
    for dy in range(k):
        for dx in range(k):
            out += kernel[dy, dx] * padded[:, dy : dy + height, dx : dx + width]
    return out.float()


def test_gaussian_blur_matches_literal_kernel_and_preserves_the_mean(cifar):
    images = as_float(cifar[:64])
    sigma = torch.empty(64).uniform_(0.1, 2.0)
    out = ops.gaussian_blur(images, sigma, 5)
    for i in (0, 17, 63):
        torch.testing.assert_close(out[i], literal_blur(images[i], sigma[i].item(), 5), atol=1e-5, rtol=0)
    shift = out.mean(dim=(1, 2, 3)) - images.mean(dim=(1, 2, 3))  # only reflect padding at the borders moves it
    assert shift.abs().max() < 1e-2 and shift.mean().abs() < 5e-4
    constant = torch.full((4, 3, 32, 32), 0.3)
    torch.testing.assert_close(ops.gaussian_blur(constant, torch.full((4,), 2.0), 7), constant)
    assert (out.std(dim=(2, 3)) <= images.std(dim=(2, 3)) + 1e-6).all()  # smoothing never adds contrast
    torch.testing.assert_close(ops.gaussian_blur(images, torch.full((64,), 1e-3), 5), images)
    assert ops.blur_kernel_size(224) == 23 and ops.blur_kernel_size(32) == 3


def test_solarize_and_normalize(cifar):
    images = as_float(cifar[:32])
    mask = torch.arange(32) % 3 == 0
    out = ops.solarize(images, mask)
    torch.testing.assert_close(out[mask], torch.where(images[mask] >= 0.5, 1 - images[mask], images[mask]))
    torch.testing.assert_close(out[~mask], images[~mask])
    expected = (cifar[:32].float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(normalize(cifar[:32], MEAN, STD), expected)


def test_digits_views_jitter_intensity_without_flips():
    images = (ramp(2000, 8)[:, :1] * 30).to(torch.uint8)
    view = build_views({"preset": "grayscale"}, 1, 8, (0.0,), (1.0,))(images)[0]
    assert view.shape == (2000, 1, 8, 8)
    assert (view[:, 0, 4, 0] <= view[:, 0, 4, -1]).all()  # never mirrored
    scale = (view[:, 0, 4, -1] - view[:, 0, 4, 0]) / (7 * 30 / 255)
    assert scale.min() < 0.6 and scale.max() > 1.2 and math.isclose(scale.median().item(), 0.75, abs_tol=0.25)
