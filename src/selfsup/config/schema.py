"""What ``config.yaml`` may hold: every key and the type of its value, checked before anything is written.

The schema is derived, not written out: a key is valid for a method when the global defaults
(``config.DEFAULTS``), one of the method's presets (any scale), the view presets and ``ViewSpec``, or
a backbone's keyword arguments name it; its type is what those values have. A number key takes ints
and floats, a whole-number key ints only, a key whose values are strings and something else takes
only the strings seen (``data.workers``: ``auto`` or a whole number). ``DECLARED`` adds the few keys
whose default (None) does not show a type; a key that is null in all of a method's presets (chosen
automatically) takes the types the same key has for other methods. Sections in ``FREE_SECTIONS`` (the
library-written ``recipe``) may hold anything, and values the recipe fitted are not checked again.

Errors are one line naming the key: an unknown key with the nearest valid name, a value with the
type the key expects, a number that is not finite (nan, inf) or outside the key's range (``BOUNDS``:
a temperature of 0, a momentum of 1, a negative learning rate pass a type check and fail only later).
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

from selfsup.config.build import CONFIG_VERSION, DEFAULTS, parse_value, shown

FREE_SECTIONS = {"recipe"}
# Keys the code reads whose default is None (or that no preset sets), with example values of their type.
DECLARED: dict[str, tuple[Any, ...]] = {
    "method": ("simclr",),
    "data.spec": ("digits",),
    "data.dir": (None, "path"),
    "data.image_size": (None, 32),
    "data.stream": ("auto", True),
    "data.workers": ("auto", 4),
    "train.channels_last": ("auto", True),
    "train.tensorboard": ("auto", True),
    "backbone.pretrained": (False,),  # timm:NAME and torchvision:NAME only (nn/external.py)
    "backbone.class": ("package.module.Class",),  # backbone.name custom: the class of fit(..., encoder=MODULE)
    "train.compile": (False, "backbone", "step"),
    "train.compile_mode": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
    "train.compile_backend": ("inductor", "aot_eager", "eager", "cudagraphs"),
    "optim.warmup_epochs": (1.5,),  # a fraction of an epoch is fine (the schedule is per step)
    "views.preset": (None, "simclr"),
    "optim.betas": ([0.9, 0.999],),
}
MAX_WIDTH = 1024  # backbone.width: 16x the standard 64 (a ResNet-50 at 1024 has 6.5e9 weights)


@dataclass(frozen=True)
class Bound:
    """The range a number key must fall in; an open end excludes its value (a temperature of 0 divides by 0)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    words: str = ""  # what to call the range, where the comparisons say it less plainly

    def holds(self, value: float) -> bool:
        above = self.low is None or value > self.low or (value == self.low and not self.low_open)
        below = self.high is None or value < self.high or (value == self.high and not self.high_open)
        return above and below

    def describe(self) -> str:
        if self.words:
            return self.words
        low = None if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = None if self.high is None else f"{'<' if self.high_open else '<='} {self.high:g}"
        return " and ".join(part for part in (low, high) if part)


POSITIVE, NON_NEGATIVE, WHOLE_POSITIVE = (Bound(0, low_open=True), Bound(0),
                                            Bound(1, words="a positive whole number"))
EMA_MOMENTUM = Bound(0, 1)  # 1: the target no longer moves (the end of BYOL's schedule)
# Keys whose values outside a range fail only later (nan at step 1, a division by zero) or never say so.
BOUNDS: dict[str, Bound] = {
    "loss.temperature": POSITIVE, "loss.base_temperature": POSITIVE, "eval.knn_t": POSITIVE,
    "optim.lr": NON_NEGATIVE, "optim.bias_lr": NON_NEGATIVE, "optim.probe_lr": POSITIVE,
    "head.negatives_lr": NON_NEGATIVE, "optim.weight_decay": NON_NEGATIVE, "head.negatives_weight_decay": NON_NEGATIVE,
    "optim.momentum": Bound(0, 1, high_open=True), "optim.lars_eta": NON_NEGATIVE,
    "optim.warmup_epochs": NON_NEGATIVE, "optim.min_lr_ratio": Bound(0, 1),
    "head.momentum": EMA_MOMENTUM, "head.momentum_base": EMA_MOMENTUM, "head.momentum_final": EMA_MOMENTUM,
    "head.bank_momentum": EMA_MOMENTUM,
    "train.epochs": WHOLE_POSITIVE, "train.batch_size": WHOLE_POSITIVE, "train.checkpoint_every": WHOLE_POSITIVE,
    "train.checkpoint_every_steps": NON_NEGATIVE, "train.seed": Bound(0, 2**63 - 1),
    "backbone.width": Bound(1, MAX_WIDTH),
    "eval.every": NON_NEGATIVE, "eval.linear_every": NON_NEGATIVE, "eval.knn_k": WHOLE_POSITIVE,
    "eval.linear_epochs": NON_NEGATIVE, "eval.monitor_batches": NON_NEGATIVE,
}
ANNOTATION_EXAMPLES = {"int": 1, "float": 1.0, "str": "s", "bool": True, "None": None, "Sequence": [], "list": [],
                       "tuple": []}
SCALES = ("cifar", "imagenet", "sequence")


@dataclass
class Rule:
    """The values seen for one key, and what that admits."""

    types: set[type] = field(default_factory=set)
    strings: set[str] = field(default_factory=set)
    per_view: bool = False  # a views key: a list of per-view values is also fine

    def see(self, value: Any) -> None:
        if isinstance(value, tuple):
            value = list(value)
        self.types.add(type(value))
        if isinstance(value, str):
            self.strings.add(value)

    def admits(self, value: Any) -> bool:
        if value is None:
            return type(None) in self.types
        if isinstance(value, list) and (self.per_view or list in self.types):
            return True
        if isinstance(value, bool):
            return bool in self.types
        if isinstance(value, int):
            return bool({int, float} & self.types)
        if isinstance(value, float):
            return float in self.types
        if isinstance(value, str):
            return str in self.types and (self.types <= {str, type(None)} or value in self.strings)
        return type(value) in self.types

    def expected(self) -> str:
        names = []
        if float in self.types:
            names.append("a number")
        elif int in self.types:
            names.append("a whole number")
        if bool in self.types:
            names.append("true or false")
        if str in self.types:
            names.append("a string" if self.types <= {str, type(None)} else " or ".join(sorted(self.strings)))
        if list in self.types or self.per_view:
            names.append("a list" if list in self.types else "one value per view as a list")
        if dict in self.types:
            names.append("a section")
        if type(None) in self.types:
            names.append("null")
        return " or ".join(names) or "nothing (unused key)"


Schema = dict[str, Rule]  # dotted key -> rule; sections are keys whose rule admits dict


def _walk(node: dict[str, Any], prefix: str = ""):
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        yield dotted, value
        if isinstance(value, dict):
            yield from _walk(value, dotted + ".")


def _see(schema: Schema, dotted: str, value: Any, per_view: bool = False) -> None:
    rule = schema.setdefault(dotted, Rule())
    rule.per_view = rule.per_view or per_view
    rule.see({} if isinstance(value, dict) else value)


def _view_keys(schema: Schema) -> None:
    from selfsup.data import sequence_views, views

    for spec in fields(views.ViewSpec):
        default = spec.default if spec.default is not spec.default_factory else None
        _see(schema, f"views.{spec.name}", default if spec.name != "size" else 32, per_view=True)
    for preset in [*views.PRESETS.values(), *sequence_views.PRESETS.values()]:
        for key, value in preset.items():
            _see(schema, f"views.{key}", value, per_view=True)
    for key in views.MAKER_KEYS - {"preset"}:
        schema.setdefault(f"views.{key}", Rule(per_view=True))
    for key, example in (("num_views", 2), ("strength", 0.5), ("small_crops", 6), ("small_size", 16)):
        _see(schema, f"views.{key}", example)


def _backbone_keys(schema: Schema) -> None:
    """``backbone.name`` and every keyword argument of a registered backbone, typed by its annotation and default."""
    import importlib
    import re

    from selfsup.nn.backbones import BACKBONES

    _see(schema, "backbone.name", "resnet18")
    for target in BACKBONES.values():
        module, name = target.split(":")
        for parameter in inspect.signature(getattr(importlib.import_module(module), name)).parameters.values():
            if parameter.name in ("in_channels", "input_size") or parameter.kind is parameter.VAR_KEYWORD:
                continue
            dotted = f"backbone.{parameter.name}"
            if parameter.default is not inspect.Parameter.empty:
                _see(schema, dotted, parameter.default)
            for token in re.findall(r"[A-Za-z]+", str(parameter.annotation)):
                if token in ANNOTATION_EXAMPLES:
                    _see(schema, dotted, ANNOTATION_EXAMPLES[token])


@lru_cache(maxsize=None)
def schema_for(method: str) -> Schema:
    """Every valid dotted key of a ``method``'s config, with its rule.

    A key whose every value is null here (chosen automatically, e.g. a projector as wide as the encoder's
    features) takes the types the same key has in other methods' presets, or, if none, any value.
    """
    from selfsup import methods

    methods.get(method)  # one line for an unknown method
    schema = copy.deepcopy(_observed(method))
    for dotted, rule in schema.items():
        if rule.types == {type(None)}:
            for other in methods.available():
                rule.types |= _observed(other).get(dotted, Rule()).types
            if rule.types == {type(None)}:
                rule.types |= {bool, int, float, str, list}
    return schema


@lru_cache(maxsize=None)
def _observed(method: str) -> Schema:
    """The rules of ``method``'s keys from the values seen in the defaults, its presets, views and backbones."""
    from selfsup import methods

    schema: Schema = {}
    for dotted, value in _walk(DEFAULTS):
        _see(schema, dotted, value)
    for dotted, examples in DECLARED.items():
        for value in examples:
            _see(schema, dotted, value)
    _view_keys(schema)
    _backbone_keys(schema)
    preset = methods.preset(method)
    for scale in SCALES:
        for dotted, value in _walk(preset.get(scale) or {}):
            _see(schema, dotted, value, per_view=dotted.startswith("views."))
    return schema


def _free(dotted: str) -> bool:
    return dotted.split(".", 1)[0] in FREE_SECTIONS and "." in dotted


def _unknown_key(method: str, dotted: str, schema: Schema) -> ValueError:
    from selfsup import methods

    others = [name for name in methods.available() if name != method and dotted in schema_for(name)]
    if others:
        return ValueError(
            f"{dotted} is not a setting of {method} (it is a setting of {', '.join(others[:4])}"
            f"{', ...' if len(others) > 4 else ''}); see presets/{method}.yaml for {method}'s settings"
        )
    close = difflib.get_close_matches(dotted, [k for k in schema if not _free(k)], n=1, cutoff=0.6)
    sections = ", ".join(sorted(k for k in schema if "." not in k))
    hint = f"; did you mean {close[0]}?" if close else f"; sections: {sections}"
    return ValueError(f"unknown config key {shown(dotted)}{hint}")


def check_value(method: str, dotted: str, value: Any, source: str = "") -> None:
    """One line (``ValueError``) unless ``dotted`` is a key of ``method``'s config and ``value`` fits it."""
    if _free(dotted):
        return
    schema = schema_for(method)
    rule = schema.get(dotted)
    if rule is None:
        raise _unknown_key(method, dotted, schema)
    where = f"{source}: " if source else ""
    if dict in rule.types and not isinstance(value, dict):
        example = next((k for k in schema if k.startswith(dotted + ".")), dotted + ".KEY")
        raise ValueError(
            f"{where}{dotted} is a section of config.yaml, not a value; set one of its keys, e.g. {example}=..."
        )
    if not rule.admits(value):
        raise ValueError(f"{where}{dotted} expects {rule.expected()}, got {value!r}")
    check_number(dotted, value, where)


def _numbers(value: Any) -> list[float]:
    """The numbers in a value: itself, or those of a (per-view) list, at any depth."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    return [n for item in value for n in _numbers(item)] if isinstance(value, list) else []


def check_number(dotted: str, value: Any, where: str = "") -> None:
    """One line unless every number in ``value`` is finite and in ``dotted``'s range (``BOUNDS``).

    A nan or inf learning rate or temperature passes a type check and ends in a nan loss at step 1.
    """
    for number in _numbers(value):
        if isinstance(number, float) and not math.isfinite(number):
            raise ValueError(f"{where}{dotted} must be a finite number, got {number}")
        bound = BOUNDS.get(dotted)
        if bound is not None and not bound.holds(number):
            raise ValueError(f"{where}{dotted} must be {bound.describe()}, got {number!r}")


def check_assignments(method: str, assignments: list[str] | None) -> None:
    """Check every ``--set key=value`` (key known for ``method``, value of its type) before anything runs."""
    for assignment in assignments or []:
        if "=" not in assignment:
            raise ValueError(f"--set expects key=value (e.g. backbone.width=16), got '{shown(assignment)}'")
        key, text = assignment.split("=", 1)
        value = parse_value(text)
        check_value(method, key.strip(), value, f"--set {shown(assignment)}")
        if isinstance(value, dict):
            for dotted, inner in _walk(value, key.strip() + "."):
                check_value(method, dotted, inner, f"--set {shown(assignment)}")


def leaves(node: dict[str, Any], prefix: str = ""):
    """(dotted key, value) of every value in a nested dict that is not itself a non-empty section."""
    for key, value in node.items():
        if isinstance(value, dict) and value:
            yield from leaves(value, f"{prefix}{key}.")
        elif not isinstance(value, dict):
            yield f"{prefix}{key}", value


def check_overrides(method: str, overrides: dict[str, Any] | None) -> None:
    """Check the keys and values of a nested ``overrides`` dict (from the command line or ``fit``)."""
    for dotted, value in leaves(overrides or {}):
        check_value(method, dotted, value, "override")


def check_version(version: Any) -> None:
    """One line unless ``version`` (a config's ``config_version``) is one this selfsup reads."""
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"config_version must be a whole number >= 1, got {version!r}: not a selfsup config.yaml")
    if version > CONFIG_VERSION:
        raise ValueError(
            f"this config.yaml is from a newer selfsup (config_version {version}; this one reads up to "
            f"{CONFIG_VERSION}): upgrade selfsup (pip install -U selfsup) to run it"
        )


def check_config(cfg: dict[str, Any]) -> None:
    """Check a whole config (keys and value types), e.g. one read from ``config.yaml`` or built from overrides.

    Values the recipe fitted to the run (listed in ``recipe.changes``) are the library's, not checked again.
    """
    if isinstance(cfg, dict):
        check_version(cfg.get("config_version", 1))
    if not isinstance(cfg, dict) or not isinstance(cfg.get("method"), str):
        raise ValueError("the config has no method: it is not a selfsup config.yaml")
    from selfsup import methods

    methods.get(cfg["method"])
    fitted = set((cfg.get("recipe") or {}).get("changes") or {})  # written by the library (config/recipe.py)
    for dotted, value in _walk(cfg):
        if not _free(dotted) and dotted not in fitted:
            check_value(cfg["method"], dotted, value)
