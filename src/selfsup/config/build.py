"""Run configuration: global defaults <- the method's preset for the data's scale <- command line <- ``--set``.

The result is a nested dict written verbatim to ``config.yaml``; it holds everything
needed to rerun. Sections: ``method`` (name), ``data``, ``backbone``, ``head`` (the
method's modules and state), ``loss`` (its loss's keyword arguments), ``views``,
``optim``, ``train``, ``eval``.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import yaml

CONFIG_VERSION = 1  # the format of config.yaml; a file with a higher number is from a newer selfsup

DEFAULTS: dict[str, Any] = {
    "config_version": CONFIG_VERSION,
    "method": None,
    "data": {
        "spec": None,
        "dir": None,
        "image_size": None,  # folder: side images are resized and centre-cropped to (None: the first image's)
        "on_error": "stop",  # an unreadable image file: 'stop' naming it, or 'skip' it and report the count
        "stream": "auto",  # folder: decode in DataLoader workers instead of caching; auto: when it is large
        "workers": "auto",  # decoding processes per training process when streaming (auto: CPUs, at most 8)
    },
    "backbone": {"name": "resnet18", "width": 64, "stem": "cifar"},
    "head": {},
    "loss": {},
    "views": {"preset": None},
    "optim": {
        "name": "lars",
        "lr": 0.3,  # per 256 images (linear scaling rule, Goyal et al. 2017) unless scale_lr is false
        "scale_lr": True,
        "weight_decay": 1e-6,
        "momentum": 0.9,
        "lars_eta": 0.001,  # trust coefficient of You et al. 2017, SimCLR and BYOL; solo-learn's presets use 0.02
        "warmup_epochs": 10,
        "min_lr_ratio": 0.0,
        "probe_lr": 0.1,
    },
    "train": {
        "epochs": 100,
        "batch_size": 256,
        "seed": 0,
        "device": "auto",
        "precision": "auto",  # bf16 autocast on CUDA, and on bf16 CPUs for images > 28 px (train/numerics.py)
        "compile": False,  # torch.compile: false, backbone (or true), or the whole step's forward (train/step.py)
        "compile_mode": "default",  # torch.compile's mode; reduce-overhead adds CUDA graphs
        "compile_backend": "inductor",
        "channels_last": "auto",  # images in NHWC: auto on a GPU, and on a CPU for images > 28 px (train/numerics.py)
        "checkpoint_every": 1,  # epochs between checkpoints (and the last epoch)
        "checkpoint_every_steps": 0,  # also a mid-epoch checkpoint every N steps (0: none); resumes exactly
        "on_nan": "stop",  # a nan/inf loss: 'stop' (last good checkpoint kept) or 'skip' the step and count it
        "sync_batchnorm": True,  # under DDP: batch statistics over the global batch (MoCo uses shuffled BN instead)
        "find_unused_parameters": False,
        "progress": True,
        "tensorboard": "auto",  # event files in RUN/tensorboard: auto (when tensorboard is installed), true, false
    },
    "recipe": {"fit": True},  # rescale run-relative preset values to short runs and small data (config/recipe.py)
    "eval": {"every": 10, "linear_every": 0, "knn_k": 200, "knn_t": 0.1, "linear_epochs": 100, "monitor_batches": 4, "plots": True},
}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A new dict: ``base`` with ``override`` merged in, recursively for nested dicts."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


MAX_YAML_CHARS = 2**20  # a config.yaml is a few KB; 1 Mi characters is far past any real one
MAX_YAML_NESTING = 20  # levels of sections and lists (a written config.yaml has at most 7)
MAX_YAML_VALUES = 100_000  # values after expanding aliases (a config.yaml holds about 150)


class YamlCapError(ValueError):
    """A YAML text past one of the caps above: refused before it is expanded or turned into Python values."""


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2's numbers: ``1e-3`` and ``1e6`` are floats (YAML 1.1 needs a dot and a signed exponent).

    Composing counts nesting, so that ``[[[[...]]]]`` is refused in one line instead of a RecursionError.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        self.nesting = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self.nesting += 1
        try:
            if self.nesting > MAX_YAML_NESTING:
                line = self.peek_event().start_mark.line + 1
                raise YamlCapError(f"the YAML nests deeper than {MAX_YAML_NESTING} levels at line {line}: "
                                   "a selfsup config holds sections of values; flatten it")
            return super().compose_node(parent, index)
        finally:
            self.nesting -= 1


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$|^[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9_]+)$"),
    list("-+0123456789."),
)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph that aliases would expand past ``MAX_YAML_VALUES`` values or ``MAX_YAML_NESTING``
    levels, or into itself: nine levels of ten-way aliases are 2.9 KB of text and 10^9 values once walked."""
    count = 0
    stack: list[tuple[yaml.Node, int, frozenset[int]]] = [(root, 1, frozenset())]
    while stack:
        node, depth, above = stack.pop()
        count += 1
        if id(node) in above:
            raise YamlCapError(f"a YAML alias at line {node.start_mark.line + 1} refers to a section that holds it: "
                               "write the values out")
        if count > MAX_YAML_VALUES or depth > MAX_YAML_NESTING:
            raise YamlCapError(f"the YAML's aliases expand to more than {MAX_YAML_VALUES} values or "
                               f"{MAX_YAML_NESTING} levels: write the values out without aliases (*name)")
        if isinstance(node, yaml.CollectionNode):
            children = [item for pair in node.value for item in pair] if isinstance(node, yaml.MappingNode) else node.value
            stack.extend((child, depth + 1, above | {id(node)}) for child in children)


def _yaml_error_line(error: yaml.YAMLError) -> str:
    where = getattr(error, "problem_mark", None)
    at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
    problem = getattr(error, "problem", None) or getattr(error, "reason", None) or error.__class__.__name__
    return f"cannot parse YAML{at}: {' '.join(str(problem).split())}"


def load_yaml(text: str) -> Any:
    """Parse YAML text (a ``--set`` value or a config file) with YAML 1.2 numbers; one-line error if malformed.

    A file handed to a user may be built to hang or exhaust a parser: its size, nesting and alias expansion
    are capped (``MAX_YAML_*``), each refused in one line before any value is built.
    """
    if len(text) > MAX_YAML_CHARS:
        raise YamlCapError(f"the YAML is {len(text)} characters, more than the {MAX_YAML_CHARS} a selfsup "
                           "config may hold: is it a config.yaml?")
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise ValueError(_yaml_error_line(error)) from None
    except YamlCapError:
        raise
    except (ValueError, OverflowError) as error:  # a value the constructor rejects: 10^5000 digits, a 13th month
        reason = " ".join(str(error).split(";")[0].split())  # without Python's advice to raise its own limit
        raise ValueError(f"cannot parse YAML: a value is out of range ({reason})") from None
    finally:
        if loader is not None:
            loader.dispose()


def parse_value(text: str) -> Any:
    """YAML scalar parsing for ``--set`` values: 0.2, 1e-3 -> float, true -> bool, [1, 2] -> list."""
    return load_yaml(text)


def shown(text: str) -> str:
    """``text`` as it can stand in a one-line message: escaped and quoted if it holds a line break or the like."""
    return text if text.isprintable() else repr(text)


def set_dotted(cfg: dict[str, Any], assignment: str) -> None:
    """Apply ``key.sub=value`` to ``cfg`` in place."""
    if "=" not in assignment:
        raise ValueError(f"--set expects key=value (e.g. backbone.width=16), got '{shown(assignment)}'")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    node = cfg
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {shown(key)}: '{shown(part)}' is a value, not a section")
    value = parse_value(text)
    if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
        value = deep_merge(node[parts[-1]], value)  # a section's keys change; the others stay (train={} is no change)
    node[parts[-1]] = value


def data_options(overrides: dict[str, Any] | None = None, assignments: list[str] | None = None) -> dict[str, Any]:
    """The ``data`` section as defaults, overrides and ``data.*`` assignments set it.

    Loading needs it before the dataset, and so the method's preset for its scale, is known.
    """
    cfg = deep_merge({"data": DEFAULTS["data"]}, {"data": (overrides or {}).get("data", {})})
    for assignment in assignments or []:
        if assignment.strip().startswith("data."):
            set_dotted(cfg, assignment)
    return cfg["data"]


def scale_of(kind: str, input_size: int) -> str:
    """Which preset section applies: 'sequence', 'cifar' (images up to 64 px) or 'imagenet'."""
    if kind == "sequence":
        return "sequence"
    return "cifar" if input_size <= 64 else "imagenet"


def build_config(
    method: str,
    preset: dict[str, Any],
    scale: str,
    overrides: dict[str, Any] | None = None,
    assignments: list[str] | None = None,
) -> dict[str, Any]:
    """Merge defaults, the preset's ``scale`` section, explicit overrides and ``--set`` assignments."""
    if scale not in preset:
        available = [k for k in preset if k in ("cifar", "imagenet", "sequence")]
        raise ValueError(f"method '{method}' has no preset for {scale}-size data (it has: {', '.join(available)})")
    cfg = deep_merge(DEFAULTS, preset[scale])
    cfg["method"] = method
    cfg = deep_merge(cfg, overrides or {})
    for assignment in assignments or []:
        set_dotted(cfg, assignment)
    return cfg


class _PlainDumper(yaml.SafeDumper):
    """Every value written out: a config.yaml holds no aliases, which ``load_yaml`` caps as a bomb's tool."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(cfg: dict[str, Any]) -> str:
    return yaml.dump(cfg, Dumper=_PlainDumper, sort_keys=False)
