"""``selfsup export --run RUN --format onnx|torchscript``: the encoder for deployment, checked on the test split.

The exported model takes what the encoder takes: float32 [batch, C, H, W] images normalised as
(pixels / 255 - mean) / std with the run's data's mean and std (printed with the result), any batch size.
Before the file is kept, the exported model embeds the run's whole test split and must agree with
PyTorch's encoder to ``TOLERANCE`` (largest absolute difference); otherwise nothing is written.

- ``onnx``: ``torch.onnx.export`` (the torch.export-based exporter, which needs ``onnxscript``), checked
  with ``onnxruntime`` on the CPU. onnx, onnxscript and onnxruntime are the ``export`` extra
  (``pip install 'selfsup[export]'``).
- ``torchscript``: ``torch.jit.trace`` (nothing beyond torch), checked by loading the saved file back.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from selfsup.commands.evaluation import load_run
from selfsup.evaluate.features import extract_features, normalize_batch

FORMATS = {"onnx": "encoder.onnx", "torchscript": "encoder.torchscript.pt"}
TOLERANCE = 1e-4
BATCH = 256


def export(run: str | Path, fmt: str, out: str | Path | None = None) -> dict[str, Any]:
    """Write the run's encoder as ``fmt`` (to ``out``, default ``RUN/encoder.onnx`` or ``RUN/encoder.torchscript.pt``)
    once it reproduces PyTorch's test embeddings to ``TOLERANCE``; returns what was written and checked."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    if fmt == "onnx":
        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise ValueError(f"--format onnx needs {', '.join(missing)}: pip install 'selfsup[export]' "
                             f"(or pip install {' '.join(missing)})")
    cfg, encoder, test = load_run(run)
    if not isinstance(test.data, torch.Tensor):
        raise ValueError("export checks the encoder on the test split in memory; this run's test split is streamed")
    target = Path(out) if out is not None else Path(run) / FORMATS[fmt]
    encoder = encoder.cpu().float().eval()
    expected = extract_features(encoder, test, torch.device("cpu"), batch_size=BATCH).numpy()
    inputs = [normalize_batch(test.data[i : i + BATCH], test) for i in range(0, len(test), BATCH)]
    partial = target.with_name(f".{target.name}.partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        embed = _onnx(encoder, inputs[0], partial) if fmt == "onnx" else _torchscript(encoder, inputs[0], partial)
        exported = np.concatenate([embed(x) for x in inputs])
        difference = float(np.abs(exported - expected).max())
        if exported.shape != expected.shape or not difference <= TOLERANCE:
            raise ValueError(f"the exported encoder's test embeddings differ from PyTorch's by up to {difference:.3g} "
                             f"(> {TOLERANCE:g}); nothing was written")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return {
        "out": str(target), "format": fmt, "checked_images": len(test), "max_abs_difference": difference,
        "input": f"float32 [batch, {test.channels}, {test.input_size}, {test.input_size}], (pixels / 255 - mean) / std",
        "mean": list(test.mean), "std": list(test.std), "features": int(expected.shape[1]),
    }


def _onnx(encoder: nn.Module, example: torch.Tensor, path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    import onnxruntime

    batch = torch.export.Dim("batch", min=1)
    with _quiet("torch.onnx"):  # the exporter logs each optional op library it skips (torchvision's, ...)
        torch.onnx.export(encoder, (example,), str(path), input_names=["images"], output_names=["features"],
                          dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x.numpy()})[0]


@contextlib.contextmanager
def _quiet(logger: str):
    """Warnings and the ``logger``'s records below errors are not shown while exporting."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _torchscript(encoder: nn.Module, example: torch.Tensor, path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still TorchScript's way in
        traced = torch.jit.trace(encoder, example)
        torch.jit.save(traced, str(path))
        loaded = torch.jit.load(str(path))

    def embed(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(x).numpy()

    return embed
