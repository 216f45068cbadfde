"""selfsup: self-supervised representation learning, verified and fast.

The Python API, imported on first use (``import selfsup`` stays light):

    selfsup.fit(method, data, out_dir=...)           train and write a run folder (``selfsup train``)
    selfsup.evaluate_run(run, protocol="all")         score a finished run (``selfsup eval``)
    selfsup.embed(run, data, out)                     a run encoder's features (``selfsup embed``)
    selfsup.export(run, "onnx")                       the encoder for other runtimes (``selfsup export``)
    selfsup.load_encoder(run)                         the trained encoder, with ``.preprocessing``

A run trained with ``fit(..., encoder=MODULE)`` loads from the TorchScript program it holds; where none could be
made, ``load_encoder``, ``evaluate_run`` and ``export`` take ``encoder=MODULE`` (built as for training) and load the
run's weights into it.
"""

from __future__ import annotations

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
