"""torchvision's models on a CPU-only machine, for tests only (never in the library).

The registry's torchvision wheel is a CUDA build: ``import torchvision`` fails there with "operator
torchvision::nms does not exist", because its compiled ops do not load. Its pure-Python parts (models,
transforms) need only the schemas of ``torchvision::nms`` and ``torchvision::qnms`` to import; this module
defines them (without kernels: no test calls them) when the real ops are missing.
"""

from __future__ import annotations

import importlib.util

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library = None


def import_torchvision():
    """The ``torchvision`` module, or None when it is not installed."""
    global _library
    if importlib.util.find_spec("torchvision") is None:
        return None
    missing = [name for name in _SCHEMAS if not torch._C._dispatch_has_kernel(f"torchvision::{name}")
               and not _has_schema(name)]
    if missing and _library is None:
        _library = torch.library.Library("torchvision", "DEF")
        for name in missing:
            _library.define(_SCHEMAS[name])
    import torchvision

    return torchvision


def _has_schema(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True
