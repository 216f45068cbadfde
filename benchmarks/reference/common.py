"""Scaffolding shared by the compact reference implementations (written apart from the library).

Each reference (``benchmarks/reference/<method>.py``) is a ``Reference``: its heads, its loss and its
per-step state, plus a ``Recipe`` (optimiser and schedule). This module holds what they all share:

- views: batched torch ops on uint8 images (random resized crop through an affine sampling grid,
  horizontal flip, colour jitter, grayscale), one setting for small grayscale glyphs and one for
  colour images (SimCLR's CIFAR augmentation with MoCo v2's crop scale 0.2);
- heads: ``mlp`` (Linear-BN-ReLU blocks), sized by ``head_width``;
- momentum encoders: ``copy_frozen``, ``ema_update``, BYOL's cosine momentum schedule and the
  short-run momentum ``short_run_momentum``; MoCo's shuffled batch norm on one device
  (``shuffled_bn_forward``);
- optimisers: SGD, Adam(W) and LARS (You et al. 2017) with a warm-up + cosine learning rate;
- the loop ``train`` and the scoring ``encode`` / ``knn_scores`` (the library's weighted kNN).

Only the backbone (passed in) and ``selfsup.evaluate.knn.knn_top1`` come from the library.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.evaluate.knn import knn_top1

# ---- views ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Augmentation:
    """One random view: crop of ``scale`` x the area at aspect ``ratio``, flip, jitter, grayscale."""

    scale: tuple[float, float]
    flip_p: float
    jitter: tuple[float, float, float, float]  # brightness, contrast, saturation, hue
    jitter_p: float
    gray_p: float
    ratio: tuple[float, float] = (3 / 4, 4 / 3)


# 8-28 px grayscale glyphs: the crop keeps at least 40 % of the glyph, no flip (a mirrored 2 is not a 2),
# brightness and contrast only (one channel has no saturation or hue).
GLYPHS = Augmentation(scale=(0.4, 1.0), flip_p=0.0, jitter=(0.4, 0.4, 0.0, 0.0), jitter_p=0.8, gray_p=0.0)
# Colour images (SimCLR App. B.9 for CIFAR: no blur; crop scale 0.2 as MoCo v2 / W-MSE on CIFAR).
COLOUR = Augmentation(scale=(0.2, 1.0), flip_p=0.5, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2)

_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


class Views:
    """uint8 images [B, C, H, W] -> a normalised random view [B, C, H, W] (float32)."""

    def __init__(self, augmentation: Augmentation, mean: Sequence[float], std: Sequence[float]):
        self.aug = augmentation
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def __call__(self, images: Tensor) -> Tensor:
        x = self.crop(images.float() / 255.0)
        x = self.jitter(x)
        if self.aug.gray_p > 0:
            gray = x.mean(1, keepdim=True).expand_as(x)
            x = torch.where(self.coin(len(x), self.aug.gray_p)[:, None, None, None], gray, x)
        return (x - self.mean) / self.std

    @staticmethod
    def coin(n: int, p: float) -> Tensor:
        return torch.rand(n) < p

    def crop(self, x: Tensor) -> Tensor:
        """Random resized crop (+ flip) back to the input size, bilinear, through one affine grid."""
        n, _, height, width = x.shape
        area = torch.empty(n).uniform_(*self.aug.scale)
        log_ratio = torch.empty(n).uniform_(*(math.log(r) for r in self.aug.ratio))
        w = (area * log_ratio.exp()).sqrt().clamp(max=1.0)  # crop side as a fraction of the image side
        h = (area / log_ratio.exp()).sqrt().clamp(max=1.0)
        cx, cy = (1 - w) * (2 * torch.rand(n) - 1), (1 - h) * (2 * torch.rand(n) - 1)
        flip = torch.where(self.coin(n, self.aug.flip_p), -1.0, 1.0)
        zero = torch.zeros(n)
        theta = torch.stack([torch.stack([w * flip, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
        grid = F.affine_grid(theta, [n, x.shape[1], height, width], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def jitter(self, x: Tensor) -> Tensor:
        """Brightness, contrast, saturation, hue (YIQ rotation), each factor uniform in [1 - s, 1 + s]."""
        n = len(x)
        applied = self.coin(n, self.aug.jitter_p)

        def factor(strength: float, centre: float = 1.0) -> Tensor:
            f = torch.empty(n).uniform_(centre - strength, centre + strength)
            return torch.where(applied, f, torch.full((n,), centre)).view(n, 1, 1, 1)

        brightness, contrast, saturation, hue = self.aug.jitter
        if brightness:
            x = (x * factor(brightness)).clamp(0, 1)
        if contrast:
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * factor(contrast) + mean).clamp(0, 1)
        if saturation:
            gray = x.mean(1, keepdim=True)
            x = ((x - gray) * factor(saturation) + gray).clamp(0, 1)
        if hue:
            angle = factor(hue, 0.0).view(n) * 2 * math.pi
            cos, sin, one, zero = angle.cos(), angle.sin(), torch.ones(n), torch.zeros(n)
            rotation = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], 1).view(n, 3, 3)
            matrix = torch.linalg.inv(_RGB_TO_YIQ) @ rotation @ _RGB_TO_YIQ
            x = torch.einsum("nij,njhw->nihw", matrix, x).clamp(0, 1)
        return x


def views_for(channels: int, mean: Sequence[float], std: Sequence[float]) -> Views:
    """Glyph views for one channel, colour views for three."""
    return Views(GLYPHS if channels == 1 else COLOUR, mean, std)


# ---- heads and momentum encoders -----------------------------------------------------------------


def head_width(paper_width: int, feature_dim: int, paper_feature_dim: int = 2048) -> int:
    """A hidden width keeping the paper's ratio to the representation (ResNet-50: 2048), at least 512."""
    return max(512, paper_width * feature_dim // paper_feature_dim)


def mlp(dims: Sequence[int], last_bn: bool = False, bias: bool = True, hidden_bn: bool = True) -> nn.Sequential:
    """Linear -> BN -> ReLU for every hidden layer, then a Linear (and BN without affine if ``last_bn``)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(d_in, d_out, bias=bias and not (last and last_bn)))
        if not last:
            layers += [nn.BatchNorm1d(d_out)] * hidden_bn + [nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)


def copy_frozen(module: nn.Module) -> nn.Module:
    """A copy that takes no gradient (momentum encoder, target network)."""
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """xi <- m xi + (1 - m) theta, for parameters and BN statistics."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(momentum).add_(o.detach(), alpha=1 - momentum)
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)


def short_run_momentum(paper_momentum: float, total_steps: int, lag_fraction: float = 0.05) -> float:
    """The paper's EMA momentum, lowered so the target lags by at most ``lag_fraction`` of the run.

    An EMA with momentum m averages over ~1 / (1 - m) steps: 0.996 over 250 steps is a small lag in
    a run of 500k steps but longer than a whole run of 200 steps, whose target would barely move.
    """
    return min(paper_momentum, 1 - 1 / max(lag_fraction * total_steps, 2))


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL's schedule: m = 1 - (1 - base) (cos(pi k / K) + 1) / 2, rising from ``base`` to 1."""
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2


def shuffled_bn_forward(encoder: nn.Module, x: Tensor, group_size: int = 32) -> Tensor:
    """MoCo's shuffle BN on one device: shuffle the batch, run it in groups (one BN batch each), unshuffle.

    The authors' CIFAR demo emulates 8 GPUs with a split batch norm; the groups here do the same, so a
    key's BN statistics come from other images than its query's.
    """
    order = torch.randperm(len(x))
    out = torch.cat([encoder(chunk) for chunk in x[order].split(group_size)])
    return out[order.argsort()]


def grouped_forward(encoder: nn.Module, x: Tensor, group_size: int = 32) -> Tensor:
    """The queries' side of shuffle BN: the unshuffled batch in the same group size."""
    return torch.cat([encoder(chunk) for chunk in x.split(group_size)])


# ---- optimisation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Optimiser and schedule. ``lr`` is the rate at batch ``lr_batch``, scaled to the run's batch
    linearly (``scaling='linear'``: the SGD papers' rule) or not at all (``'none'``).

    LARS recipes keep the paper's lr at the paper's batch: the trust ratio makes each layer's step
    lr x eta x |w|, whatever the batch, and linear scaling from batch 4096 to 128 would shrink every
    step 32-fold in a run of a few hundred steps (SimCLR on digits, 20 epochs, kNN@200: 0.90 with
    SimCLR's small-batch square-root rule, seed 0; 0.92-0.935 with the paper's lr and 0.93-0.94 with
    Adam 1e-3, seeds 0-2). Warm-up: 10 % of the run where the paper warms up (10 of 100 epochs)."""

    optimizer: str  # sgd | adam | adamw | lars
    lr: float
    weight_decay: float
    batch_size: int
    lr_batch: int = 256
    scaling: str = "linear"
    warmup: float = 0.0  # fraction of the run
    momentum: float = 0.9

    def scaled_lr(self, batch_size: int) -> float:
        return self.lr * (batch_size / self.lr_batch if self.scaling == "linear" else 1.0)


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step for each weight matrix is scaled by eta ||w|| / ||g + wd w||
    (You et al. 2017); biases and BN parameters (1-D) get plain SGD and no weight decay, as in
    SimCLR, BYOL, Barlow Twins and MoCo v3."""

    def __init__(self, params, lr: float, weight_decay: float = 0.0, momentum: float = 0.9, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, eta=eta))

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if p.ndim > 1:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = p.norm(), update.norm()
                    trust = torch.where((w_norm > 0) & (u_norm > 0), group["eta"] * w_norm / u_norm, 1.0)
                    update = update * trust
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])


def build_optimizer(groups: list[dict], recipe: Recipe, batch_size: int) -> torch.optim.Optimizer:
    """Each group may carry ``fixed_lr`` (kept constant, SimSiam's predictor) or ``lr_scale``."""
    lr = recipe.scaled_lr(batch_size)
    for group in groups:
        group["base_lr"] = lr * group.get("lr_scale", 1.0)
        group["lr"] = group["base_lr"]
    wd = recipe.weight_decay
    if recipe.optimizer == "lars":
        return LARS(groups, lr, wd, recipe.momentum)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr, momentum=recipe.momentum, weight_decay=wd)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr, weight_decay=wd)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr, weight_decay=wd)
    raise ValueError(f"unknown optimizer {recipe.optimizer}")


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


# ---- the method interface and the loop -----------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """What a reference may know about its run when it is built."""

    feature_dim: int
    num_samples: int
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    channels: int
    image_size: int


class Reference(nn.Module):
    """A method: ``loss(views, indices, labels)`` plus optional hooks. ``self.backbone`` is the encoder."""

    num_views = 2

    def __init__(self, backbone: nn.Module, run: Run):
        super().__init__()
        self.backbone, self.run = backbone, run

    def loss(self, views: list[Tensor], indices: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def before_epoch(self, epoch: int, images: Tensor, views: Views) -> None:
        """Called before each epoch with all pretraining images (DeepCluster's k-means)."""

    def after_step(self, progress: float) -> None:
        """Called after each optimiser step; ``progress`` = steps done / total steps (EMA, queues)."""

    def encoder(self) -> nn.Module:
        """The module whose output is scored (a wrapper for CPC's patch grid)."""
        return self.backbone


@dataclass
class Trained:
    encoder: nn.Module
    losses: list[float]  # mean loss per epoch
    wall_s: float


def train(
    build, recipe: Recipe, backbone: nn.Module, images: Tensor, labels: Tensor,
    mean: Sequence[float], std: Sequence[float], epochs: int, seed: int = 0,
) -> Trained:
    """Pre-train ``build(backbone, run)`` on uint8 ``images`` for ``epochs``; drop the last partial batch."""
    torch.manual_seed(seed)
    batch_size = min(recipe.batch_size, len(images))
    steps = len(images) // batch_size
    run = Run(backbone.out_dim, len(images), batch_size, steps, steps * epochs, images.shape[1], images.shape[-1])
    model = build(backbone, run)
    views = views_for(images.shape[1], mean, std)
    optimizer = build_optimizer(model.param_groups(), recipe, batch_size)
    warmup = round(recipe.warmup * run.total_steps)
    losses, step, start = [], 0, time.perf_counter()
    for epoch in range(epochs):
        model.train()
        model.before_epoch(epoch, images, views)
        order, total = torch.randperm(len(images)), 0.0
        for indices in order[: steps * batch_size].view(steps, batch_size):
            factor = lr_factor(step, run.total_steps, warmup)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * (1.0 if group.get("fixed_lr") else factor)
            batch = images[indices]
            loss = model.loss([views(batch) for _ in range(model.num_views)], indices, labels[indices])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            model.after_step(step / run.total_steps)
            total += loss.item()
        losses.append(total / steps)
        if not math.isfinite(losses[-1]):
            break
    return Trained(model.encoder(), losses, time.perf_counter() - start)


# ---- scoring -------------------------------------------------------------------------------------


@torch.no_grad()
def encode(encoder: nn.Module, images: Tensor, mean: Sequence[float], std: Sequence[float], batch: int = 512,
           ) -> Tensor:
    """Eval-mode features of un-augmented, normalised uint8 images."""
    was_training = encoder.training
    encoder.eval()
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    out = torch.cat([encoder((chunk.float() / 255.0 - m) / s) for chunk in images.split(batch)])
    encoder.train(was_training)
    return out.flatten(1)


def knn_scores(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, ks: Sequence[int], t: float,
               ) -> dict[int, float]:
    """The library's weighted kNN top-1 at each k (features of any kind: raw pixels or an encoder's)."""
    return {k: knn_top1(train_x, train_y, test_x, test_y, k=k, temperature=t) for k in ks}
