"""selfsup: self-supervised representation learning, verified and fast.

The Python API, imported on first use (``import selfsup`` stays light):

    selfsup.fit(method, data, out_dir=...)           train and write a run folder (``selfsup train``)
    selfsup.evaluate(run, protocol="all")             score a finished run (``selfsup eval``; also ``evaluate_run``)
    selfsup.embed(run, data, out)                     a run encoder's features (``selfsup embed``)
    selfsup.export(run, "onnx")                       the encoder for other runtimes (``selfsup export``)
    selfsup.load_encoder(run)                         the trained encoder, with ``.preprocessing``

A run trained with ``fit(..., encoder=MODULE)`` loads from the TorchScript program it holds; where none could be
made, ``load_encoder``, ``evaluate_run`` and ``export`` take ``encoder=MODULE`` (built as for training) and load the
run's weights into it.
"""

from __future__ import annotations

import types
from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_API = {
    "fit": "selfsup.train.trainer",
    "evaluate_run": "selfsup.commands.evaluation",
    "embed": "selfsup.commands.embed",
    "export": "selfsup.commands.export",
    "load_encoder": "selfsup.commands.evaluation",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'selfsup' has no attribute '{name}'")


class _EvaluatePackage(types.ModuleType):
    """``selfsup.evaluate`` is both the package of evaluation on tensors and, called, the API's evaluation of a run
    (DESIGN.md's ``selfsup.evaluate(run, protocol)``, the same function as ``selfsup.evaluate_run``)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return import_module("selfsup.commands.evaluation").evaluate_run(*args, **kwargs)


import_module("selfsup.evaluate").__class__ = _EvaluatePackage  # the package's __init__ is a docstring: stays light
