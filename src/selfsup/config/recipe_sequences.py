"""The recipe for sequences: CPC's window and prediction steps, and a batch whose step fits in memory.

A conv-GRU encoder's activations grow with the series' length, and CPC's scores with its square: the
loss scores every prediction against every latent of the batch (``losses.cpc``), a
[B (T' - k), B (T' - k)] matrix per step k ahead, T' = window / downsampling latents per window.
Twenty-four one-second clips at 16 kHz under the UCR preset (downsampling 8, batch 16, K = 4) make
four 4 GB matrices and a process of over 20 GB. The paper never scores such a matrix: it trains on
windows of 20480 samples, 128 latents at its downsampling of 160, 8 windows a GPU. So, in this order:

- window: CPC trains on random windows of the paper's 128 latents (``views.crop_length``), at most the series;
- prediction steps: fewer than the window's latents (the method needs a target k steps ahead);
- batch: halved until it is no larger than the data and ``step_bytes`` is within ``ACTIVATION_BUDGET``.

``step_bytes`` is one training step's activations in float32, summed from the encoder's tensors per
value (the constants below, measured with ``resource.getrusage`` on CPU over clips of 1,024 to 16,000
samples; each rounded up) and the loss's score matrices:

    per sample  = CONV_TENSORS W sum_i L_i + T' (GRU_PER_CONTEXT C + GRU_PER_LATENT W) + INPUT_COPIES C_in T
    step_bytes  = 4 [views B / P per sample + (K + LOGIT_EXTRA) (B / P) (T' - 1) B (T' - 1)]   (CPC's scores)

with W the conv width, L_i the length after conv layer i, C the GRU's units, T the series' length,
P processes (each scores its own predictions against the latents of all). Under 8 processes the
paper's setting (batch 64 of 20480-sample windows, width 512, K = 12) needs 0.9 GB: left as it is.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from selfsup.data.sequence_views import PRESETS as VIEW_PRESETS
from selfsup.nn.sequence import AUDIO_CONTEXT, AUDIO_STRIDES, AUDIO_WIDTH

# facebookresearch/CPC_audio, cpc/cpc_default_config.py: --sizeWindow 20480 (samples at 16 kHz);
# cpc/model.py: CPCEncoder.DOWNSAMPLING = 160. A window holds 20480 / 160 = 128 latents; cpc/train.py:
# --batchSizeGPU 8 windows a GPU.
PAPER_WINDOW = 20480
PAPER_DOWNSAMPLING = 160
WINDOW_LATENTS = PAPER_WINDOW // PAPER_DOWNSAMPLING
ACTIVATION_BUDGET = 2 * 2**30  # bytes of activations one training step of one process may hold
PROCESS_MIN_BATCH = 2  # samples per process the batch is not halved below (batch norm's least, as validate asks)
FLOAT_BYTES = 4
CONV_TENSORS = 4  # floats per conv output value: the conv's output, the ReLU's, and their gradients (measured 3.5)
GRU_PER_CONTEXT = 8  # floats per latent step and GRU unit kept for backward: gates, hidden states (measured 6.4)
GRU_PER_LATENT = 12  # floats per latent step and conv channel: the GRU's input projections, gradients (measured 11.6)
INPUT_COPIES = 4  # the series, its normalised copy, the window and its gradient
LOGIT_EXTRA = 2  # score matrices alive besides the one log-softmax kept per step ahead: the scores and a gradient


@dataclass(frozen=True)
class SequenceSize:
    """What the sequence rules scale by."""

    samples: int  # pretraining sequences
    length: int  # steps of each series (T)
    channels: int
    processes: int  # training processes the batch is split over


SequenceRule = Callable[[dict[str, Any], SequenceSize], dict[str, tuple[Any, str]]]


def downsampling(backbone: dict[str, Any]) -> int | None:
    """The conv-GRU encoder's total stride (input steps per latent), or None for another backbone."""
    if backbone.get("name") != "conv_gru":
        return None
    return math.prod(backbone.get("strides") or AUDIO_STRIDES)


def window(cfg: dict[str, Any], size: SequenceSize) -> int:
    """Steps of the series one training view holds: ``views.crop_length`` or the whole series."""
    return min(cfg["views"].get("crop_length") or size.length, size.length)


def cpc_window(cfg: dict[str, Any], size: SequenceSize) -> dict[str, tuple[Any, str]]:
    """CPC trains on random windows of ``WINDOW_LATENTS`` latents (the paper's 20480 samples at downsampling 160),
    at most the series: longer windows add no prediction the paper makes and cost memory with their square."""
    stride = downsampling(cfg["backbone"])
    if cfg["method"] != "cpc" or stride is None:
        return {}
    preset = cfg["views"].get("crop_length")
    fitted = min(preset or size.length, size.length, WINDOW_LATENTS * stride)
    if fitted >= size.length and preset is None:
        return {}
    why = (f"{size.length}-step series: CPC trains on windows of at most the series and {WINDOW_LATENTS} latents, the "
           f"paper's {PAPER_WINDOW} samples at downsampling {PAPER_DOWNSAMPLING} ({fitted} steps at downsampling {stride})")
    return {"views.crop_length": (fitted, why)}


def cpc_prediction_steps(cfg: dict[str, Any], size: SequenceSize) -> dict[str, tuple[Any, str]]:
    """CPC predicts fewer steps ahead than a window has latents (a target k latents on must exist)."""
    stride, steps = downsampling(cfg["backbone"]), cfg["head"].get("prediction_steps")
    if cfg["method"] != "cpc" or stride is None or not isinstance(steps, int):
        return {}
    latents = window(cfg, size) // stride
    fitted = max(1, min(steps, latents - 1))
    why = f"a window of {window(cfg, size)} steps gives {latents} latents at downsampling {stride}"
    return {"head.prediction_steps": (fitted, why)}


def step_bytes(cfg: dict[str, Any], size: SequenceSize, batch: int) -> int | None:
    """Activation bytes of one training step of one process (the module's formula), or None for another backbone."""
    backbone, stride = cfg["backbone"], downsampling(cfg["backbone"])
    if stride is None:
        return None
    steps = window(cfg, size)
    width, context = backbone.get("width") or AUDIO_WIDTH, backbone.get("context_dim") or AUDIO_CONTEXT
    lengths, scale = [], 1
    for layer_stride in backbone.get("strides") or AUDIO_STRIDES:
        scale *= layer_stride
        lengths.append(steps // scale)
    latents = steps // stride
    per_sample = (CONV_TENSORS * width * sum(lengths) + latents * (GRU_PER_CONTEXT * context + GRU_PER_LATENT * width)
                  + INPUT_COPIES * size.channels * size.length)
    views = cfg["views"]
    num_views = views.get("num_views") or VIEW_PRESETS.get(views.get("preset") or "sequence", {}).get("num_views", 2)
    local = batch // size.processes
    floats = num_views * local * per_sample
    if cfg["method"] == "cpc":
        predictions = max(latents - 1, 0)
        floats += (cfg["head"].get("prediction_steps", 1) + LOGIT_EXTRA) * local * predictions * batch * predictions
    return FLOAT_BYTES * floats


def activation_batch(cfg: dict[str, Any], size: SequenceSize) -> dict[str, tuple[Any, str]]:
    """The preset's batch halved until it is no larger than the data and a step's activations (``step_bytes``)
    fit ``ACTIVATION_BUDGET``; not below ``PROCESS_MIN_BATCH`` a process, and a multiple of the processes."""
    batch = cfg["train"]["batch_size"]
    if step_bytes(cfg, size, batch) is None:
        return {}
    fitted = batch

    def too_big(b: int) -> bool:
        return b > size.samples or (step_bytes(cfg, size, b) or 0) > ACTIVATION_BUDGET

    while too_big(fitted) and fitted // 2 >= PROCESS_MIN_BATCH * size.processes and fitted // 2 % size.processes == 0:
        fitted //= 2
    if fitted == batch:
        return {}
    needs = f"{(step_bytes(cfg, size, fitted) or 0) / 2**30:.2g} GiB of activations a step"
    if batch > size.samples:
        why = f"a batch of {batch} is larger than the {size.samples} series; {fitted} needs {needs}"
    else:
        why = (f"{size.samples} series of {window(cfg, size)} steps: batch {batch} would need "
               f"{(step_bytes(cfg, size, batch) or 0) / 2**30:.2g} GiB of activations a step (budget "
               f"{ACTIVATION_BUDGET / 2**30:g} GiB), {fitted} needs {needs}")
    return {"train.batch_size": (fitted, why)}


SEQUENCE_RULES: tuple[SequenceRule, ...] = (cpc_window, cpc_prediction_steps, activation_batch)


def sequence_run(cfg: dict[str, Any], size: SequenceSize) -> dict[str, Any]:
    """The ``recipe.run`` record of a sequence run: its size and one step's estimated activations."""
    batch, epochs = cfg["train"]["batch_size"], cfg["train"]["epochs"]
    estimate = step_bytes(cfg, size, batch)
    run = {"sequences": size.samples, "epochs": epochs, "steps": size.samples // batch * epochs,
           "length": size.length, "window": window(cfg, size), "processes": size.processes}
    if estimate is not None:
        run["activation_gib"] = round(estimate / 2**30, 3)
    return run


def activation_notes(run: dict[str, Any]) -> list[str]:
    """A note when the ``recipe.run`` record's step needs more than ``ACTIVATION_BUDGET`` (what the user set)."""
    if run.get("activation_gib", 0) <= ACTIVATION_BUDGET / 2**30:
        return []
    note = (f"a training step will hold about {run['activation_gib']:.3g} GiB of activations (the recipe fits the "
            f"batch to {ACTIVATION_BUDGET / 2**30:g} GiB): a smaller train.batch_size or views.crop_length needs less")
    return [note]
