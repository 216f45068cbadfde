"""CPC on audio trains within a memory bound (issue 19): the recipe fits the window, CPC's steps and the batch.

Twenty-four one-second clips at 8 kHz (16,000 steps once resampled to 16 kHz) used to give batch 16 of whole
clips: 2,000 latents each, four 4 GB score matrices, a process of over 20 GB. Each case runs ``selfsup train`` in
a child whose address space is capped (``RLIMIT_AS``: the old code fails there instead of taking the machine) and
whose peak resident memory (``os.wait4``'s ``ru_maxrss``) must stay under ``MAX_RSS``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from selfsup import methods
from selfsup.config.build import build_config
from selfsup.config.recipe import describe, fit_recipe
from selfsup.config.recipe_sequences import ACTIVATION_BUDGET, SequenceSize, step_bytes
from selfsup.data import ArrayDataset
from selfsup.train.setup import make_config

ADDRESS_LIMIT = 6 * 2**30  # the child's virtual memory: a safety net, above the fixed runs' needs
MAX_RSS = 3 * 2**30  # peak resident memory a run may reach (the old code reached 4.4 GiB before the cap stopped it)
RATE = 8000


def write_clips(folder: Path, count: int, seconds: float, classes: int) -> None:
    """``count`` mono 16-bit clips, sine tones of one pitch per class plus noise, in ``folder/CLASS/``."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    for i in range(count):
        signal = 0.5 * np.sin(2 * np.pi * 220 * (1 + i % classes) * t) + 0.1 * rng.standard_normal(len(t))
        (folder / f"c{i % classes}").mkdir(parents=True, exist_ok=True)
        with wave.open(str(folder / f"c{i % classes}" / f"{i}.wav"), "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(RATE)
            f.writeframes((np.clip(signal, -1, 1) * 32767).astype("<i2").tobytes())


def train_capped(data: Path, out: Path, settings: list[str]) -> tuple[int, int, str]:
    """``selfsup train --method cpc`` in a child capped at ``ADDRESS_LIMIT``: (exit code, peak resident bytes, stderr).

    The child sets the cap on itself and execs the command line, so ``os.wait4`` reports that one process's peak.
    """
    cli = [sys.executable, "-m", "selfsup.cli", "train", "--method", "cpc", "--data", f"wav:{data}", "--epochs", "2",
           "--out", str(out), *[a for s in settings for a in ("--set", s)]]
    capped = (f"import os, resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_LIMIT}, {ADDRESS_LIMIT})); "
              "os.execv(sys.executable, sys.argv[1:])")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SELFSUP_CACHE": str(out.parent / "cache")}
    env.pop("SELFSUP_DEBUG", None)
    child = subprocess.Popen([sys.executable, "-c", capped, *cli], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = child.stderr.read().decode()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_maxrss * 1024, stderr


@pytest.mark.parametrize("count, seconds, layout", [(24, 1.0, "flat"), (4, 10.0, "train/test")])
def test_cpc_on_audio_clips_trains_within_the_memory_bound(tmp_path, count, seconds, layout):
    """24 one-second clips, and 4 ten-second clips (plus 4 held out): exit 0, summary.json, peak RSS < 3 GiB."""
    data = tmp_path / "clips"
    if layout == "flat":
        write_clips(data, count, seconds, classes=3)
    else:
        write_clips(data / "train", count, seconds, classes=2)
        write_clips(data / "test", count, seconds, classes=2)
    code, peak, stderr = train_capped(data, tmp_path / "run", ["train.progress=false", "train.tensorboard=false"])
    assert code == 0, stderr[-2000:]
    assert peak < MAX_RSS, f"peak resident memory {peak / 2**30:.2f} GiB"
    assert (tmp_path / "run" / "summary.json").is_file()
    cfg = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert cfg["views"]["crop_length"] == 1024  # 128 latents at the UCR preset's downsampling 8
    assert cfg["recipe"]["run"]["activation_gib"] <= ACTIVATION_BUDGET / 2**30
    assert "views.crop_length=1024" in stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs"] == 2


def series(count: int, length: int) -> ArrayDataset:
    """``count`` sequences without the memory: one series broadcast (the recipe reads sizes only)."""
    return ArrayDataset(torch.zeros(1, 1, length).expand(count, -1, -1), torch.arange(count) % 2, ["a", "b"], "s",
                        kind="sequence", mean=(0.0,), std=(1.0,))


def test_the_user_set_batch_and_window_are_never_refitted():
    """--set train.batch_size and views.crop_length stay, and one line says what a step will hold."""
    clips = series(18, 16000)
    kept = make_config("cpc", "wav:clips", clips, assignments=["train.batch_size=16", "views.crop_length=16000"])
    assert kept["train"]["batch_size"] == 16 and kept["views"]["crop_length"] == 16000
    assert kept["recipe"]["changes"] == {}
    assert kept["recipe"]["run"]["activation_gib"] > 20  # four [32000, 32000] score matrices and more
    assert "23.2 GiB of activations" in describe(kept)
    window_only = make_config("cpc", "wav:clips", clips, overrides={"views": {"crop_length": 16000}})
    assert window_only["views"]["crop_length"] == 16000 and window_only["train"]["batch_size"] == 4
    batch_only = make_config("cpc", "wav:clips", clips, assignments=["train.batch_size=16"])
    assert batch_only["train"]["batch_size"] == 16 and batch_only["views"]["crop_length"] == 1024
    assert make_config("cpc", "wav:clips", clips, assignments=["recipe.fit=false"])["recipe"] == {"fit": False}


def test_sequence_rules_fit_short_series_and_leave_the_papers_scale_alone():
    """UCR's GunPoint (50 x 150 steps) keeps the preset; 3-latent series predict 2 steps; the paper's audio setting
    (batch 64 of 20480-sample windows over 8 GPUs) is left as it is, on one process its batch is halved to fit."""
    cpc = methods.preset("cpc")
    gunpoint = fit_recipe(build_config("cpc", cpc, "sequence"), series(50, 150), set())
    assert gunpoint["recipe"]["changes"] == {} and gunpoint["recipe"]["run"]["window"] == 150
    short = fit_recipe(build_config("cpc", cpc, "sequence"), series(18, 24), set())
    assert short["head"]["prediction_steps"] == 2
    audio = build_config("cpc", cpc, "audio", {"train": {"epochs": 200}})
    librispeech = series(28_539, 20480 * 10)
    assert fit_recipe(audio, librispeech, set(), processes=8)["recipe"]["changes"] == {}
    one = fit_recipe(audio, librispeech, set(), processes=1)
    assert one["train"]["batch_size"] == 16 and "6.8 GiB" in one["recipe"]["changes"]["train.batch_size"]["why"]
    clips = fit_recipe(audio, series(18, 16000), set(), processes=1)
    assert clips["views"]["crop_length"] == 16000 and clips["train"]["batch_size"] == 16  # no longer than the data
    size = SequenceSize(18, 16000, 1, 1)
    assert step_bytes({**audio, "backbone": {"name": "resnet18"}}, size, 16) is None
