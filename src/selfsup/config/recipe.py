"""Fitting a paper's recipe to the run at hand: a short run, a small dataset, small images.

Presets hold the papers' recipes: 200 to 1000 epochs over 50,000 to 1.28M images. Several of
their numbers are really fractions of the run or of the dataset, and copied verbatim into a
run of 20 epochs over 1,257 digits they stop doing their job: 10 warm-up epochs are half the
run, a 4096-key queue holds every image's own older keys as negatives, an EMA target with a
100-step time constant barely moves in 80 steps, 3000 prototypes outnumber the images.

``fit_recipe`` keeps every preset number whose role survives at this size and rescales the others by the role
they play in the paper's setting, each rule saying which (images: ``recipe_rules``, sequences: ``recipe_sequences``).
A key the user set (``--set``, a command-line flag, an override) is never touched, nor a value derived from one
(``recipe_rules.Rule.derives``). The config's ``recipe`` section records every change with the preset's value and
the reason, so ``config.yaml`` still says exactly what ran; a config read back (resume, rerun) is not refitted. At
the papers' own scale (CIFAR-10, CIFAR-100, STL-10, ImageNet) every rule leaves the preset as it is.
"""

from __future__ import annotations

import copy
from typing import Any

from selfsup import distributed, methods
from selfsup.config.build import DEFAULTS, scale_of
from selfsup.config.recipe_rules import (
    KNN_CLASS_FRACTION,
    RULES,
    Rule,
    RunSize,
    knn_k,
    lr_sum,
)
from selfsup.config.recipe_sequences import (
    SEQUENCE_RULES,
    SequenceSize,
    activation_notes,
    sequence_run,
)
from selfsup.data import ArrayDataset

__all__ = ["KNN_CLASS_FRACTION", "MAX_TOTAL_STEPS", "RunSize", "check_run_length", "describe", "explicit_keys",
           "fit_recipe", "is_explicit", "knn_k", "lr_sum", "run_size"]

MAX_TOTAL_STEPS = 10**9  # 30x ImageNet's 1000-epoch runs at batch 4096; more is a typo, and would never end


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

    The returned config's ``recipe`` section maps each changed key to its value, the preset's value and why
    (``changes``), and each key a rule would have changed but left because the user set it or a key it derives
    from (``kept``: the value kept, the value not fitted to, the key set, the rule's reason);
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
    kept: dict[str, Any] = {}
    epochs = preset_epochs(cfg, data)
    for rule in [Rule(r) for r in SEQUENCE_RULES] if data.kind == "sequence" else RULES:
        size = sequences if data.kind == "sequence" else run_size(cfg, data, epochs)
        for key, (value, why) in rule.fit(cfg, size).items():
            preset = get_dotted(cfg, key)
            if preset == value:
                continue
            set_by_user = [k for k in (key, *rule.sources(key)) if is_explicit(k, explicit)]
            if set_by_user:
                kept[key] = {"value": preset, "not_fitted_to": value, "because_set": set_by_user[0], "why": why}
                continue
            set_dotted_value(cfg, key, value)
            changes[key] = {"value": value, "preset": preset, "why": why}
    if data.kind == "sequence":
        recipe["run"] = sequence_run(cfg, sequences)
    else:
        size = run_size(cfg, data)
        recipe["run"] = {"images": size.samples, "epochs": size.epochs, "steps": size.steps, "image_side": size.image_side}
    recipe["changes"] = changes
    if kept:
        recipe["kept"] = kept
    return cfg


def preset_epochs(cfg: dict[str, Any], data: ArrayDataset) -> int:
    """``train.epochs`` of the method's own preset for ``data``'s scale: the run its run-relative values were set for."""
    section = methods.preset(cfg["method"]).get(scale_of(data.kind, data.input_size)) or {}
    return (section.get("train") or {}).get("epochs", DEFAULTS["train"]["epochs"])


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


def run_size(cfg: dict[str, Any], data: ArrayDataset, preset_epochs: int = 0) -> RunSize:
    """What the image rules scale by; ``preset_epochs``: the preset's own run (0: unknown)."""
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
        preset_epochs=preset_epochs,
    )


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
