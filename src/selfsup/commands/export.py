"""``selfsup export --run RUN --format onnx|torchscript|torchvision|timm``: the encoder for other code, with the
preprocessing it expects.

Every export writes ``FILE.json`` beside ``FILE``: the input the encoder takes (kind, shape, channels, image
side or sequence length) and its normalisation, (pixels / 255 - mean) / std per channel for images and
(x - mean) / std for sequences, with the mean and std of the run's training data.

- ``onnx``: ``torch.onnx.export`` (the torch.export-based exporter, which needs ``onnxscript``), the
  preprocessing also in the model's ``metadata_props``; checked with ``onnxruntime`` on the CPU. onnx,
  onnxscript and onnxruntime are the ``export`` extra (``pip install 'selfsup[export]'``).
- ``torchscript``: ``torch.jit.trace`` (nothing beyond torch), the preprocessing also in the archive's extra
  file ``preprocessing.json``; checked by loading the saved file back.
  For both, the exported model embeds the run's whole test split and must agree with PyTorch's encoder to
  ``TOLERANCE`` (largest absolute difference); otherwise nothing is written.
- ``torchvision`` / ``timm``: a state dict of our ResNet-18/50 at the standard width (64) under the names of
  torchvision's ``resnet18/50`` and timm's (they share them), classifier left out, for the detectors and
  segmenters that take their backbones from those libraries (the hand-over of MoCo's
  ``detection/convert-pretrain-to-detectron2.py``). A CIFAR stem needs the model's ``conv1`` made 3x3 stride 1
  and its ``maxpool`` an identity first: the JSON lists the lines, and stderr says so.

A run trained with a custom encoder (``fit(..., encoder=MODULE)``) exports from the TorchScript program it holds
(``run/custom_encoder.py``; to ONNX through TorchScript's exporter, as ``torch.export`` takes no ScriptModule), or
from ``encoder=`` (the module, given the run's weights); ``torchvision`` and ``timm`` are refused, as it is not
selfsup's ResNet.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from selfsup.commands.evaluation import load_run
from selfsup.data import ArrayDataset
from selfsup.evaluate.features import extract_features, normalize_batch
from selfsup.nn.resnet import STANDARD_WIDTH, ResNet, torchvision_state_dict
from selfsup.run import custom_encoder
from selfsup.run.checkpoint import atomic_write
from selfsup.run.console import Console
from selfsup.run.files import claim_in_run
from selfsup.run.run_folder import read_config

FORMATS = {
    "onnx": "encoder.onnx", "torchscript": "encoder.torchscript.pt",
    "torchvision": "encoder.torchvision.pt", "timm": "encoder.timm.pt",
}
STATE_DICT_FORMATS = ("torchvision", "timm")
TOLERANCE = 1e-4
BATCH = 256


def export(
    run: str | Path, fmt: str, out: str | Path | None = None, encoder: nn.Module | None = None
) -> dict[str, Any]:
    """Write the run's encoder as ``fmt`` (to ``out``, default ``RUN/`` + ``FORMATS[fmt]``) and its preprocessing
    to ``out.json``; returns what was written (and, for onnx and torchscript, how closely it was checked).

    encoder: a module to load the run's weights into (``evaluation.load_run``), for a custom-encoder run."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}'; choose one of: {', '.join(FORMATS)}")
    if fmt == "onnx":
        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise ValueError(f"--format onnx needs {', '.join(missing)}: pip install 'selfsup[export]' "
                             f"(or pip install {' '.join(missing)})")
    if fmt in STATE_DICT_FORMATS and (Path(run) / "config.yaml").is_file():
        cfg = read_config(Path(run))
        if custom_encoder.is_custom(cfg):
            raise ValueError(f"--format {fmt} writes selfsup's ResNet-18 or -50 under {fmt}'s names; {run} was "
                             f"trained with a custom encoder ({cfg['backbone'].get('class')}): use --format onnx or "
                             "torchscript")
    cfg, encoder, test = load_run(run, encoder)
    target = Path(out) if out is not None else Path(run) / FORMATS[fmt]
    target.parent.mkdir(parents=True, exist_ok=True)
    encoder = encoder.cpu().float().eval()
    spec = test.preprocessing()
    if fmt in STATE_DICT_FORMATS:
        result = _export_state_dict(cfg, encoder, fmt, target, spec)
    else:
        with Console().phase("export", f"exporting to {fmt} and checking it against PyTorch on held-out inputs"):
            result = _export_program(encoder, test, fmt, target, spec)
    result.update({"out": str(target), "format": fmt, "preprocessing": str(_sidecar(target)), **spec})
    atomic_write(_sidecar(target), lambda f: f.write((json.dumps(result, indent=2) + "\n").encode()))
    return result


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".json")


def _export_program(
    encoder: nn.Module, test: ArrayDataset, fmt: str, target: Path, spec: dict[str, Any]
) -> dict[str, Any]:
    """An ONNX or TorchScript program, kept only once it reproduces PyTorch's test embeddings to ``TOLERANCE``."""
    if not isinstance(test.data, torch.Tensor):
        raise ValueError("export checks the encoder on the test split in memory; this run's test split is streamed")
    expected = extract_features(encoder, test, torch.device("cpu"), batch_size=BATCH).numpy()
    inputs = [normalize_batch(test.data[i : i + BATCH], test) for i in range(0, len(test), BATCH)]
    partial = target.with_name(f".{target.name}.partial")
    claim_in_run(target)  # listed in the run folder's manifest, so that --overwrite may delete it
    try:
        write = _onnx if fmt == "onnx" else _torchscript
        embed = write(encoder, inputs[0], partial, spec)
        exported = np.concatenate([embed(x) for x in inputs])
        difference = float(np.abs(exported - expected).max())
        if exported.shape != expected.shape or not difference <= TOLERANCE:
            raise ValueError(f"the exported encoder's test embeddings differ from PyTorch's by up to {difference:.3g} "
                             f"(> {TOLERANCE:g}); nothing was written")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return {"checked_images": len(test), "max_abs_difference": difference, "features": int(expected.shape[1])}


def _export_state_dict(
    cfg: dict[str, Any], encoder: nn.Module, fmt: str, target: Path, spec: dict[str, Any]
) -> dict[str, Any]:
    """Our ResNet's weights under torchvision's (and timm's) names, with the lines that make the model take them."""
    backbone = cfg["backbone"]
    name = backbone.get("name")
    if not isinstance(encoder, ResNet) or name not in ("resnet18", "resnet50"):
        raise ValueError(
            f"--format {fmt} writes a ResNet-18 or -50 under {fmt}'s names; this run's backbone is {name}, which "
            f"{fmt} has no model of (the convnet, ViTs and sequence encoders are selfsup's own layouts): "
            "use --format onnx or torchscript"
        )
    if encoder.stem[0].out_channels != STANDARD_WIDTH:
        raise ValueError(
            f"--format {fmt}: {fmt}'s {name} has width {STANDARD_WIDTH}, this run's has "
            f"{encoder.stem[0].out_channels}; retrain at backbone.width={STANDARD_WIDTH}, or use --format onnx or "
            "torchscript"
        )
    model = f"torchvision.models.{name}()" if fmt == "torchvision" else f"timm.create_model('{name}', num_classes=0)"
    before = ["model.fc = torch.nn.Identity()"] if fmt == "torchvision" else []
    cifar_stem = backbone.get("stem", "cifar") == "cifar"
    if cifar_stem or spec["channels"] != 3:
        kernel, stride, padding = (3, 1, 1) if cifar_stem else (7, 2, 3)
        before.append(f"model.conv1 = torch.nn.Conv2d({spec['channels']}, {STANDARD_WIDTH}, {kernel}, {stride}, "
                      f"{padding}, bias=False)")
    if cifar_stem:
        before.append("model.maxpool = torch.nn.Identity()")
        print(f"selfsup: note: the run's {name} has a CIFAR stem: before loading, give {fmt}'s model a 3x3 stride-1 "
              f"conv1 and an identity maxpool ({_sidecar(target)} lists the lines)", file=sys.stderr)
    weights = torchvision_state_dict(encoder)
    atomic_write(target, lambda f: torch.save(weights, f))
    return {
        "features": int(encoder.out_dim), "model": model, "before_loading": before,
        "load": f"model.load_state_dict(torch.load('{target.name}', weights_only=True), strict=True)",
    }


def _onnx(
    encoder: nn.Module, example: torch.Tensor, path: Path, spec: dict[str, Any]
) -> Callable[[torch.Tensor], np.ndarray]:
    import onnx
    import onnxruntime

    names = {"input_names": ["images"], "output_names": ["features"]}
    with _quiet("torch.onnx"):  # the exporter logs each optional op library it skips (torchvision's, ...)
        if isinstance(encoder, torch.jit.ScriptModule):  # a custom encoder's program: TorchScript's own exporter
            torch.onnx.export(encoder, (example,), str(path), **names, dynamo=False,
                              dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
        else:
            torch.onnx.export(encoder, (example,), str(path), **names, dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    program = onnx.load(str(path))
    onnx.helper.set_model_props(program, {key: json.dumps(value) for key, value in spec.items()})
    onnx.save(program, str(path))
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


def _torchscript(
    encoder: nn.Module, example: torch.Tensor, path: Path, spec: dict[str, Any]
) -> Callable[[torch.Tensor], np.ndarray]:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still TorchScript's way in
        traced = encoder if isinstance(encoder, torch.jit.ScriptModule) else torch.jit.trace(encoder, example)
        torch.jit.save(traced, str(path), _extra_files={"preprocessing.json": json.dumps(spec)})
        loaded = torch.jit.load(str(path))

    def embed(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(x).numpy()

    return embed
