"""The recipe's rules for images: each fits one run-relative preset value to the run at hand (``recipe.fit_recipe``).

Each rule returns ``{dotted key: (value, why)}`` for the keys it would set, read from the config as the rules
before it left it, and declares (``Rule.derives``) which of its outputs follow from another key: a value scaled
with the number of negatives, a queue dropped for the number of prototypes, a preset's own view settings. Where
the user set that other key, the output is left as it is: what the user chose was chosen with it.

Every rule leaves the preset as it is at the papers' own scale (CIFAR-10, CIFAR-100, STL-10, ImageNet, for the
preset's own epochs and batch); it bites only where the run is shorter or the data smaller than the paper's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from selfsup.config.schedule import schedule_sum

SMALL_IMAGE_SIDE = 28  # images this small get the small convnet unless a backbone is named
MIN_STEPS_PER_EPOCH = 4  # the batch shrinks (by powers of two) until an epoch has this many steps
MIN_BATCH = 2  # but not below what batch norm can train on
WARMUP_FRACTION = 0.1  # warm-up at most this fraction of the run (or the preset's own fraction of its run, if larger)
EMA_RUN_FRACTION = 0.125  # an EMA's time constant 1 / (1 - m) at most this fraction of the run's steps
MEMORY_FRACTION = 0.25  # queues, negatives and noise samples at most this fraction of the dataset
IMAGES_PER_PROTOTYPE = 16  # solo-learn's CIFAR-10 SwAV: 3000 prototypes for 50,000 images
PROTOTYPE_FREEZE_FRACTION = 0.05  # prototypes frozen at most this fraction of the run
LARS_MIN_TRAVEL = 10.0  # weight norms an unclipped-LARS layer can travel over the run, at least
LARS_SHORT_RUN_ETA = 0.02  # the largest trust coefficient of any preset (solo-learn's)
ADAM_MIN_TRAVEL = 1.0  # the sum of Adam's lr over the run (how far one weight can move), at least
ADAM_DEFAULT_LR = 1e-3  # Kingma & Ba's default: a short run's lr is raised up to it, never above
MIN_BN_GROUP = 32  # samples per batch-norm group (MoCo v1 Sec. 3.3: 8 GPUs x 32 images)
KNN_CLASS_FRACTION = 0.15  # InstDisc's k = 200 is ~16 % of an ImageNet class (1,281 images)
CPC_PATCH_FRACTION = 4  # a CPC patch a quarter of the side, every half patch (Sec. 3.2: 64 px every 32 at 256 px)


@dataclass(frozen=True)
class RunSize:
    """What the rules scale by."""

    samples: int  # pretraining images
    labelled_per_class: float  # labelled training images per class (kNN neighbours)
    epochs: int
    steps: int  # optimizer steps of the whole run at the fitted batch size
    image_side: int
    channels: int
    preset_epochs: int = 0  # the epochs the method's preset sets for this scale (0: unknown)


@dataclass(frozen=True)
class Rule:
    """A rule, and for those of its outputs that follow from another key (an output key or a section above it),
    the user keys they derive from: an output is skipped when any of them was set by the user."""

    fit: Callable[[dict[str, Any], Any], dict[str, tuple[Any, str]]]  # (config, RunSize or recipe_sequences' size)
    derives: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def sources(self, key: str) -> tuple[str, ...]:
        """The user keys ``key``'s fitted value derives from."""
        parts = key.split(".")
        return tuple(s for i in range(1, len(parts) + 1) for s in self.derives.get(".".join(parts[:i]), ()))


def small_image_backbone(cfg: dict[str, Any], size: RunSize) -> dict[str, tuple[Any, str]]:
    """Images of 28 px or less: the small convnet instead of a ResNet that pools them to 1x1."""
    if size.image_side > SMALL_IMAGE_SIDE or not str(cfg["backbone"].get("name", "")).startswith("resnet"):
        return {}
    why = (f"{size.image_side} px images: a ResNet's stride-2 stages pool them to "
           f"{max(1, size.image_side // 8)}x{max(1, size.image_side // 8)}; the 4-block convnet keeps a spatial map")
    return {"backbone.name": ("convnet", why), "backbone.stem": (None, "the convnet has no stem choice")}


def batch_size(cfg: dict[str, Any], size: RunSize) -> dict[str, tuple[Any, str]]:
    """Halve the preset's batch until an epoch has ``MIN_STEPS_PER_EPOCH`` steps (lr scales with it)."""
    batch = cfg["train"]["batch_size"]
    fitted = batch
    while fitted > MIN_BATCH and size.samples // fitted < MIN_STEPS_PER_EPOCH:
        fitted = max(MIN_BATCH, fitted // 2)
    why = f"{size.samples} images give fewer than {MIN_STEPS_PER_EPOCH} steps per epoch at batch {batch}"
    return {"train.batch_size": (fitted, why)} if fitted != batch else {}


def warmup(cfg: dict[str, Any], size: RunSize) -> dict[str, tuple[Any, str]]:
    """The preset's warm-up, capped at ``WARMUP_FRACTION`` of the run (papers warm up for 1-10 % of it), or at the
    preset's own fraction of its own run where that is larger (MoCo v3's ViT: 40 of 300 epochs, Chen et al. 2021
    Appendix A), so that the preset's run keeps its warm-up."""
    preset = cfg["optim"].get("warmup_epochs", 0)
    fraction = max(WARMUP_FRACTION, preset / size.preset_epochs if size.preset_epochs > 0 else 0.0)
    cap = tidy(fraction * size.epochs)
    if preset <= cap:
        return {}
    return {"optim.warmup_epochs": (cap, f"{preset} warm-up epochs would be {preset / max(size.epochs, 1):.0%} "
                                         f"of a {size.epochs}-epoch run; capped at {fraction:.0%}")}


def ema_momentum(cfg: dict[str, Any], size: RunSize) -> dict[str, tuple[Any, str]]:
    """EMA targets the online network learns to predict (BYOL, MoCo v3): time constant 1 / (1 - m_base)
    at most 1/8 of the run.

    The papers' m_base = 0.99-0.996 averages over 100-250 steps of runs of 10^4-10^5 steps; in an
    80-step run such a target stays the random network it started as. (MoCo's key encoder is left
    alone: its slowness keeps the queue's keys consistent, which a short run needs as much.)
    """
    value = cfg["head"].get("momentum_base")
    cap = 1.0 - 1.0 / max(EMA_RUN_FRACTION * size.steps, 1.0)
    if not isinstance(value, float) or value <= cap:
        return {}
    return {"head.momentum_base": (round(cap, 6), f"m = {value} averages over {1 / (1 - value):.0f} steps, more "
                                                  f"than {EMA_RUN_FRACTION:.0%} of the run's {size.steps}")}


def lars_trust(cfg: dict[str, Any], size: RunSize) -> dict[str, tuple[Any, str]]:
    """LARS in a run too short to move the weights: trust coefficient 0.02 and no clip.

    LARS makes each layer's step eta * lr_t times its weight norm (x 1 / (1 - momentum) once the
    momentum builds up), so over a run a layer can travel at most eta / (1 - momentum) * sum_t lr_t
    norms: about 1,000 in SimCLR's 1000-epoch CIFAR run and 6,000 in solo-learn's VICReg, under 1 in
    80 steps of SimCLR at eta 0.001, too few to leave the random initialisation. Such a run gets
    the largest eta of any preset (solo-learn's 0.02) without solo-learn's clip, which caps a layer's
    step at plain SGD's lr_t ||g|| and so needs the long runs it was tuned for.
    """
    optim = cfg["optim"]
    if optim.get("name") != "lars" or size.steps <= 0:
        return {}
    eta = optim.get("lars_eta", 0.001)
    travel = eta * lr_sum(cfg, size) / (1.0 - optim.get("momentum", 0.9))
    if travel >= LARS_MIN_TRAVEL:
        return {}
    why = f"at eta {eta} a layer travels at most {travel:.2g} weight norms in {size.steps} steps (< {LARS_MIN_TRAVEL:g})"
    out = {"optim.lars_eta": (max(eta, LARS_SHORT_RUN_ETA), why)}
    if optim.get("lars_clip"):
        out["optim.lars_clip"] = (False, why + "; the clip caps each step at SGD's lr_t ||g||")
    return out


def adam_travel(cfg: dict[str, Any], size: RunSize) -> dict[str, tuple[Any, str]]:
    """Adam in a run too short to move the weights: lr raised until the run's sum of lr reaches
    ``ADAM_MIN_TRAVEL``, but never above Adam's default 1e-3.

    Adam moves each weight by about lr_t a step whatever the gradient's scale, so sum_t lr_t bounds how far
    a weight travels: 39 in Deep InfoMax's 1000 CIFAR epochs at the authors' lr 1e-4 (cosine), 0.019 in 20
    epochs of the 1,257 digits, where a kaiming-initialised 3x3 conv weight of 64 channels is about 0.06 from zero.
    """
    optim = cfg["optim"]
    if optim.get("name") not in ("adam", "adamw") or size.steps <= 0:
        return {}
    travel = lr_sum(cfg, size)
    factor = min(ADAM_MIN_TRAVEL / travel, ADAM_DEFAULT_LR / scaled_lr(cfg))
    if factor <= 1.0:
        return {}
    why = (f"at lr {optim['lr']:g} a weight moves at most {travel:.2g} in {size.steps} steps "
           f"(< {ADAM_MIN_TRAVEL:g}); raised towards Adam's default {ADAM_DEFAULT_LR:g}")
    return {"optim.lr": (float(f"{optim['lr'] * factor:.3g}"), why)}


def scaled_lr(cfg: dict[str, Any]) -> float:
    """The peak lr the optimizer gets: the preset's, times batch / 256 where ``optim.scale_lr`` (the default)."""
    optim = cfg["optim"]
    return optim["lr"] * (cfg["train"]["batch_size"] / 256 if optim.get("scale_lr", True) else 1.0)


def lr_sum(cfg: dict[str, Any], size: RunSize) -> float:
    """The sum of the run's learning rates over its steps: the scaled base lr times its warm-up/cosine factors.

    In closed form (``schedule_sum``), so that a run of 10^12 steps is sized as fast as one of 80.
    """
    optim = cfg["optim"]
    warmup_steps = optim.get("warmup_epochs", 0) * size.steps / max(size.epochs, 1)
    return scaled_lr(cfg) * schedule_sum(size.steps, warmup_steps, optim.get("min_lr_ratio", 0.0))


def batchnorm_groups(cfg: dict[str, Any], size: RunSize) -> dict[str, tuple[Any, str]]:
    """MoCo's one-process split BatchNorm: groups of at least ``MIN_BN_GROUP`` samples (MoCo v1's 32 per GPU),
    a divisor of the batch."""
    splits, batch = cfg["head"].get("bn_splits"), cfg["train"]["batch_size"]
    if not isinstance(splits, int) or not isinstance(batch, int) or splits <= 1:
        return {}
    fitted = max([s for s in range(1, splits + 1) if batch % s == 0 and batch // s >= MIN_BN_GROUP] or [1])
    if fitted == splits:
        return {}
    return {"head.bn_splits": (fitted, f"a batch of {batch} in {splits} groups leaves {batch / splits:g} samples "
                                       f"per group; at least {MIN_BN_GROUP}")}


def memory_sizes(cfg: dict[str, Any], size: RunSize) -> dict[str, tuple[Any, str]]:
    """MoCo's queue, AdCo's negatives: at most a quarter of the dataset. InstDisc's noise samples above
    that: the exact softmax over the whole bank instead (``noise_samples: 0``, the authors' ``--nce-k 0``).

    A queue as long as the dataset holds each image's own older keys as negatives; the papers'
    memories are 5-16 % of theirs (4096 / 50,000 on CIFAR, 65,536 / 1.28M on ImageNet). NCE's noise
    samples stand in for a sum over the bank that is too large to compute; a bank of a few thousand
    entries costs less to sum over exactly than to sample, and has no estimator error.
    """
    batch = cfg["train"]["batch_size"]
    cap = int(MEMORY_FRACTION * size.samples)
    out = {}
    for key in ("queue_size", "num_negatives", "noise_samples"):
        value = cfg["head"].get(key)
        if not isinstance(value, int) or value <= cap or (key == "queue_size" and cfg["method"] == "swav"):
            continue
        if key == "noise_samples":
            out["head.noise_samples"] = (0, f"{value} noise samples exceed {MEMORY_FRACTION:.0%} of the "
                                            f"{size.samples} images: the exact softmax over the bank (0)")
            continue
        fitted = max(batch, cap // batch * batch)
        out[f"head.{key}"] = (fitted, f"{value} exceeds {MEMORY_FRACTION:.0%} of the {size.samples} images")
        if key == "num_negatives" and "negatives_lr" in cfg["head"]:
            lr = float(f"{cfg['head']['negatives_lr'] * fitted / value:.3g}")
            out["head.negatives_lr"] = (lr, f"{fitted} adversarial negatives instead of {value}: each takes "
                                            f"{value / fitted:.0f}x the softmax share, so its ascent step scales down alike")
    return out


def prototypes(cfg: dict[str, Any], size: RunSize) -> dict[str, tuple[Any, str]]:
    """SwAV / DeepCluster v2: one prototype per ``IMAGES_PER_PROTOTYPE`` images at most."""
    value = cfg["head"].get("num_prototypes")
    if value is None:
        return {}
    cap = max(size.samples // IMAGES_PER_PROTOTYPE, 2)
    counts = value if isinstance(value, list) else [value]
    if max(counts) <= cap:
        return {}
    fitted = [min(c, cap) for c in counts] if isinstance(value, list) else min(value, cap)
    return {"head.num_prototypes": (fitted, f"{max(counts)} prototypes for {size.samples} images; "
                                            f"at most one per {IMAGES_PER_PROTOTYPE} images")}


def swav_queue(cfg: dict[str, Any], size: RunSize) -> dict[str, tuple[Any, str]]:
    """SwAV's feature queue off when the batch outnumbers the prototypes it has (as fitted or set), and its
    prototypes frozen for at most ``PROTOTYPE_FREEZE_FRACTION`` of the run."""
    head, out = cfg["head"], {}
    if cfg["method"] != "swav" or head.get("num_prototypes") is None:
        return {}
    counts = head["num_prototypes"]
    num_prototypes = max(counts) if isinstance(counts, list) else counts
    batch = cfg["train"]["batch_size"]
    if head.get("queue_size", 0) and num_prototypes <= batch:
        out["head.queue_size"] = (0, f"a batch of {batch} already outnumbers the {num_prototypes} prototypes "
                                     "Sinkhorn spreads it over (the queue is for batches smaller than that)")
    freeze = head.get("freeze_prototypes_epochs", 0)
    cap = tidy(PROTOTYPE_FREEZE_FRACTION * size.epochs)
    if freeze > cap:
        out["head.freeze_prototypes_epochs"] = (cap, f"{freeze} frozen epochs capped at "
                                                     f"{PROTOTYPE_FREEZE_FRACTION:.0%} of the run")
    return out


def grid_rows(side: int, patch: int, stride: int) -> int:
    """Rows of CPC's patch grid over an image of ``side`` px."""
    return max((side - patch) // stride + 1, 0)


def cpc_patch_grid(cfg: dict[str, Any], size: RunSize) -> dict[str, tuple[Any, str]]:
    """CPC on images: the preset's patch grid, unless it has too few rows for the rows it predicts below the first:
    then a patch of a quarter of the side every eighth (the paper's 64 px every 32 at 256 px), at least 4 px."""
    head = cfg["head"]
    patch, stride = head.get("patch_size"), head.get("patch_stride")
    if patch is None or stride is None:
        return {}
    rows = grid_rows(size.image_side, patch, stride)
    if rows > head.get("prediction_steps", 1):
        return {}
    fitted = min(patch, max(4, size.image_side // CPC_PATCH_FRACTION))
    fitted_stride = min(stride, max(1, fitted // 2))
    why = (f"{size.image_side} px images: a {patch} px patch every {stride} px leaves {max(rows - 1, 0)} rows below "
           f"the first of the {head.get('prediction_steps', 1)} to predict; a quarter of the side every half patch")
    return {"head.patch_size": (fitted, why), "head.patch_stride": (fitted_stride, why)}


def cpc_prediction_steps(cfg: dict[str, Any], size: RunSize) -> dict[str, tuple[Any, str]]:
    """CPC on images: no more prediction steps than its patch grid (as fitted or set) has rows below the first."""
    head = cfg["head"]
    if head.get("patch_size") is None or head.get("patch_stride") is None:
        return {}
    rows = grid_rows(size.image_side, head["patch_size"], head["patch_stride"])
    steps = min(head.get("prediction_steps", 1), max(rows - 1, 1))
    why = (f"{size.image_side} px images: a {head['patch_size']} px patch every {head['patch_stride']} px gives "
           f"{rows} rows, {steps} below the first to predict")
    return {"head.prediction_steps": (steps, why)}


def knn_k(k: int, labelled_per_class: float) -> int:
    """kNN's k over classes of ``labelled_per_class`` labelled images: k while a class holds k neighbours; past
    that k reaches into other classes whatever the features, and becomes ``KNN_CLASS_FRACTION`` of a class."""
    if k <= labelled_per_class:
        return k
    return max(1, min(k, round(KNN_CLASS_FRACTION * labelled_per_class)))


def knn_neighbours(cfg: dict[str, Any], size: RunSize) -> dict[str, tuple[Any, str]]:
    """kNN's k = 200 (InstDisc) where a class holds 200 images; ~16 % of an ImageNet class for smaller classes."""
    k = cfg["eval"]["knn_k"]
    fitted = knn_k(k, size.labelled_per_class)
    if fitted >= k or size.labelled_per_class == 0:  # unlabelled data: no kNN is run
        return {}
    return {"eval.knn_k": (fitted, f"{size.labelled_per_class:.0f} labelled images per class: k = {k} would reach "
                                   f"into other classes; {KNN_CLASS_FRACTION:.0%} of a class")}


def grayscale_views(cfg: dict[str, Any], size: RunSize) -> dict[str, tuple[Any, str]]:
    """One-channel images: the grayscale view preset instead of a colour one, without the colour preset's
    own settings (its crop scale, blur, solarization, multi-crop)."""
    views = cfg["views"]
    if size.channels != 1 or views.get("preset") in (None, "grayscale"):
        return {}
    out = {"views.preset": ("grayscale", f"{size.channels}-channel images have no colour to jitter")}
    for key in views:
        if key not in ("preset", "num_views"):
            out[f"views.{key}"] = (None, f"a setting of the colour preset {views['preset']}")
    return out


def tidy(epochs: float) -> int | float:
    """A number of epochs for config.yaml: whole numbers as ints, fractions to 3 decimals."""
    rounded = round(epochs, 3)
    return int(rounded) if rounded.is_integer() else rounded


RULES: tuple[Rule, ...] = (
    Rule(small_image_backbone, {"backbone.stem": ("backbone.name",)}),
    Rule(batch_size), Rule(warmup), Rule(lars_trust), Rule(adam_travel), Rule(ema_momentum), Rule(batchnorm_groups),
    Rule(memory_sizes, {"head.negatives_lr": ("head.num_negatives",)}),
    Rule(prototypes),
    Rule(swav_queue, {"head.queue_size": ("head.num_prototypes",)}),
    Rule(cpc_patch_grid, {"head.patch_size": ("head.patch_stride",), "head.patch_stride": ("head.patch_size",)}),
    Rule(cpc_prediction_steps),
    Rule(knn_neighbours),
    Rule(grayscale_views, {"views": ("views.preset",)}),
)
