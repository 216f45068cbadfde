"""Fitting a paper's recipe to the run at hand: a short run, a small dataset, small images.

Presets hold the papers' recipes: 200 to 1000 epochs over 50,000 to 1.28M images. Several of
their numbers are really fractions of the run or of the dataset, and copied verbatim into a
run of 20 epochs over 1,257 digits they stop doing their job: 10 warm-up epochs are half the
run, a 4096-key queue holds every image's own older keys as negatives, an EMA target with a
100-step time constant barely moves in 80 steps, 3000 prototypes outnumber the images.

``fit_recipe`` keeps every preset number whose role survives at this size and rescales the others by the role
they play in the paper's setting, each rule below saying which (sequences: ``recipe_sequences``). A key the user
set (``--set``, a command-line flag, an override) is never touched. The config's ``recipe`` section records every
change with the preset's value and the reason, so ``config.yaml`` still says exactly what ran; a config read back
(resume, rerun) is not refitted. At the papers' own scale every rule leaves the preset as it is.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

from selfsup import distributed
from selfsup.config.recipe_sequences import SEQUENCE_RULES, SequenceSize, activation_notes, sequence_run
from selfsup.config.schedule import schedule_sum
from selfsup.data import ArrayDataset

SMALL_IMAGE_SIDE = 28  # images this small get the small convnet unless a backbone is named
MIN_STEPS_PER_EPOCH = 4  # the batch shrinks (by powers of two) until an epoch has this many steps
MIN_BATCH = 2  # but not below what batch norm can train on
WARMUP_FRACTION = 0.1  # warm-up at most this fraction of the run
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
MAX_TOTAL_STEPS = 10**9  # 30x ImageNet's 1000-epoch runs at batch 4096; more is a typo, and would never end


@dataclass(frozen=True)
class RunSize:
    """What the rules scale by."""

    samples: int  # pretraining images
    labelled_per_class: float  # labelled training images per class (kNN neighbours)
    epochs: int
    steps: int  # optimizer steps of the whole run at the fitted batch size
    image_side: int
    channels: int


Rule = Callable[[dict[str, Any], RunSize], dict[str, tuple[Any, str]]]


def explicit_keys(overrides: dict[str, Any] | None, assignments: list[str] | None) -> set[str]:
    """Dotted keys a user set: every leaf of ``overrides`` and the key of every ``key=value`` assignment."""
    keys: set[str] = set()

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                keys.add(f"{prefix}{key}")

    walk(overrides or {}, "")
    keys.update(a.split("=", 1)[0].strip() for a in assignments or [] if "=" in a)
    return keys


def is_explicit(key: str, explicit: set[str]) -> bool:
    """True if ``key`` or a section above it was set by the user."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in explicit for i in range(1, len(parts) + 1))


def fit_recipe(cfg: dict[str, Any], data: ArrayDataset, explicit: set[str], processes: int | None = None) -> dict[str, Any]:
    """``cfg`` with the run-relative preset values rescaled to ``data`` and ``train.epochs``.

    The returned config's ``recipe`` section maps each changed key to its value, the preset's value and why;
    ``recipe.fit: false`` in ``cfg`` (or the user's ``--set recipe.fit=false``) keeps the preset verbatim. Sequences
    follow ``recipe_sequences``: window, CPC steps, a batch whose activations fit over ``processes`` (default: the run's).
    """
    check_run_length(cfg, len(data))
    cfg = copy.deepcopy(cfg)
    recipe = cfg.setdefault("recipe", {})
    recipe.setdefault("fit", True)
    if not recipe["fit"] or data.kind not in ("image", "sequence"):
        return cfg
    sequences = SequenceSize(len(data), data.input_size, data.channels, processes or distributed.world_size())
    changes: dict[str, Any] = {}
    for rule in SEQUENCE_RULES if data.kind == "sequence" else RULES:
        size = sequences if data.kind == "sequence" else run_size(cfg, data)
        for key, (value, why) in rule(cfg, size).items():
            preset = get_dotted(cfg, key)
            if is_explicit(key, explicit) or preset == value:
                continue
            set_dotted_value(cfg, key, value)
            changes[key] = {"value": value, "preset": preset, "why": why}
    size = run_size(cfg, data)
    recipe["run"] = sequence_run(cfg, sequences) if data.kind == "sequence" else {
        "images": size.samples, "epochs": size.epochs, "steps": size.steps, "image_side": size.image_side}
    recipe["changes"] = changes
    return cfg


def check_run_length(cfg: dict[str, Any], samples: int) -> None:
    """One line unless ``train.epochs`` and ``train.batch_size`` are positive whole numbers giving at most
    ``MAX_TOTAL_STEPS`` steps over ``samples``: checked before anything is sized by the run's length."""
    train = cfg["train"]
    for key in ("epochs", "batch_size"):
        value = train.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"train.{key} must be a positive whole number, got {value!r}")
    steps = max(samples // train["batch_size"], 1) * train["epochs"]
    if steps > MAX_TOTAL_STEPS:
        raise ValueError(
            f"train.epochs={train['epochs']} at batch {train['batch_size']} over {samples} samples is {steps:.3g} "
            f"steps, more than the {MAX_TOTAL_STEPS:.0e} a run may take: ask for fewer epochs"
        )


def run_size(cfg: dict[str, Any], data: ArrayDataset) -> RunSize:
    labelled = int((data.labels >= 0).sum())
    batch = cfg["train"]["batch_size"]
    epochs = cfg["train"]["epochs"]
    steps_per_epoch = len(data) // batch if isinstance(batch, int) and batch > 0 else 0
    return RunSize(
        samples=len(data),
        labelled_per_class=labelled / max(data.num_classes, 1),
        epochs=epochs if isinstance(epochs, int) else 0,
        steps=steps_per_epoch * (epochs if isinstance(epochs, int) else 0),
        image_side=data.input_size,
        channels=data.channels,
    )


# ---- the rules: each returns {dotted key: (value, why)} for the keys it would set ----------------


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
    """The preset's warm-up, capped at ``WARMUP_FRACTION`` of the run (papers warm up for 1-10 % of it)."""
    preset = cfg["optim"].get("warmup_epochs", 0)
    cap = tidy(WARMUP_FRACTION * size.epochs)
    if preset <= cap:
        return {}
    return {"optim.warmup_epochs": (cap, f"{preset} warm-up epochs would be {preset / max(size.epochs, 1):.0%} "
                                         f"of a {size.epochs}-epoch run; capped at {WARMUP_FRACTION:.0%}")}


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
    """SwAV / DeepCluster v2: one prototype per ``IMAGES_PER_PROTOTYPE`` images at most; SwAV's queue and
    prototype freezing as fractions of the run."""
    value = cfg["head"].get("num_prototypes")
    if value is None:
        return {}
    cap = max(size.samples // IMAGES_PER_PROTOTYPE, 2)
    out: dict[str, tuple[Any, str]] = {}
    counts = value if isinstance(value, list) else [value]
    if max(counts) > cap:
        fitted = [min(c, cap) for c in counts] if isinstance(value, list) else min(value, cap)
        out["head.num_prototypes"] = (fitted, f"{max(counts)} prototypes for {size.samples} images; "
                                              f"at most one per {IMAGES_PER_PROTOTYPE} images")
        counts = [min(c, cap) for c in counts]
    if cfg["method"] == "swav":
        out.update(swav_queue(cfg, size, max(counts)))
    return out


def swav_queue(cfg: dict[str, Any], size: RunSize, num_prototypes: int) -> dict[str, tuple[Any, str]]:
    head, out = cfg["head"], {}
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


def cpc_patch_grid(cfg: dict[str, Any], size: RunSize) -> dict[str, tuple[Any, str]]:
    """CPC on images: patches a quarter of the side every eighth (the paper's 64 px every 32 at 256 px, the
    preset's 8 every 4 at 32 px), at least 4 px, and no more prediction steps than the grid has rows below."""
    head = cfg["head"]
    if head.get("patch_size") is None or head.get("patch_stride") is None:
        return {}
    patch = min(head["patch_size"], max(4, size.image_side // 4))
    stride = min(head["patch_stride"], max(1, patch // 2))
    rows = (size.image_side - patch) // stride + 1
    steps = min(head.get("prediction_steps", 1), max(rows - 1, 1))
    why = f"{size.image_side} px images: a {patch} px patch every {stride} px gives {rows} rows"
    return {"head.patch_size": (patch, why), "head.patch_stride": (stride, why),
            "head.prediction_steps": (steps, why + f", {steps} below the first to predict")}


def knn_neighbours(cfg: dict[str, Any], size: RunSize) -> dict[str, tuple[Any, str]]:
    """kNN's k = 200 (InstDisc) is ~16 % of an ImageNet class; keep that fraction for small classes."""
    k = cfg["eval"]["knn_k"]
    fitted = max(1, min(k, round(KNN_CLASS_FRACTION * size.labelled_per_class)))
    if fitted >= k:
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


RULES: tuple[Rule, ...] = (
    small_image_backbone, batch_size, warmup, lars_trust, adam_travel, ema_momentum, batchnorm_groups, memory_sizes, prototypes,
    cpc_patch_grid, knn_neighbours, grayscale_views,
)


def tidy(epochs: float) -> int | float:
    """A number of epochs for config.yaml: whole numbers as ints, fractions to 3 decimals."""
    rounded = round(epochs, 3)
    return int(rounded) if rounded.is_integer() else rounded


def get_dotted(cfg: dict[str, Any], key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def set_dotted_value(cfg: dict[str, Any], key: str, value: Any) -> None:
    *sections, leaf = key.split(".")
    node = cfg
    for part in sections:
        node = node.setdefault(part, {})
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value


def describe(cfg: dict[str, Any]) -> str | None:
    """One line naming what the recipe changed (the reasons are in config.yaml) and a sequence step's activations
    past the budget (``activation_notes``: what the user set), or None if neither."""
    recipe = cfg.get("recipe", {})
    changes = recipe.get("changes", {})
    values = ", ".join(f"{key}={c['value']}" for key, c in changes.items() if c["value"] is not None)
    notes = [f"fitted to this run: {values} (why: the recipe section of config.yaml; --set KEY=... overrides)"] if changes else []
    return "; ".join(notes + activation_notes(recipe.get("run", {}))) or None
