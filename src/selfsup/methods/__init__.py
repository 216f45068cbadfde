"""Method registry: every module in this package that defines a ``Method`` subclass with a ``name``."""

from __future__ import annotations

import importlib
import pkgutil

from selfsup.methods.base import Method, RunInfo, StepOutput

__all__ = ["Method", "RunInfo", "StepOutput", "available", "get", "preset"]

_REGISTRY: dict[str, type[Method]] = {}


def _discover() -> dict[str, type[Method]]:
    if not _REGISTRY:
        for module in pkgutil.iter_modules(__path__):
            if module.name in ("base", "presets"):
                continue
            mod = importlib.import_module(f"{__name__}.{module.name}")
            for obj in vars(mod).values():
                if isinstance(obj, type) and issubclass(obj, Method) and obj is not Method and "name" in vars(obj):
                    _REGISTRY[obj.name] = obj
    return _REGISTRY


def available() -> dict[str, type[Method]]:
    """All methods, by name, sorted."""
    return dict(sorted(_discover().items()))


def get(name: str) -> type[Method]:
    registry = _discover()
    if name not in registry:
        raise ValueError(f"unknown method '{name}'; choose one of: {', '.join(sorted(registry))} (see `selfsup methods`)")
    return registry[name]


def preset(name: str) -> dict:
    """The method's preset file (paper defaults per scale), as a dict."""
    from importlib.resources import files

    import yaml

    path = files("selfsup.methods") / "presets" / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"method '{name}' has no preset file presets/{name}.yaml")
    return yaml.safe_load(path.read_text())
