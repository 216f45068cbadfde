"""Every bad input ends in one line on stderr and exit code 2, with nothing lost.

Each case drives the real command line in its own process (all cases run side by side, for time), and
asserts: exit code 2, exactly one stderr line that names the problem, no traceback, and every file
the case set up (run folders, data folders) byte for byte as before; where no folder existed, none
was created. Crafted malicious files (a checkpoint and a CIFAR batch that run a command when
unpickled) show that nothing runs.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.train.trainer import fit
from tests.helpers import digits

TRAIN = ["train", "--method", "simclr", "--data", "digits", "--set", "train.device=cpu", "--set", "train.progress=false"]
TINY = ["backbone.width=4", "train.batch_size=128", "train.epochs=2", "train.device=cpu", "train.progress=false",
        "eval.every=0", "eval.plots=false", "eval.linear_epochs=2", "eval.knn_k=20"]


class RunsCode:
    """Unpickling this runs ``touch MARKER``: the proof that a loader executed a file's content."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@dataclass
class Case:
    """argv (from a setup in the case's folder), what the one stderr line must say, and the paths that must not change."""

    setup: Callable[[Path, Path], list[str]]  # (case folder, finished run) -> argv after `selfsup`
    says: str
    code: int = 2
    watched: list[str] = field(default_factory=lambda: ["run", "data"])  # names in the case folder


def _write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def copy_run(finished: Path, case: Path) -> Path:
    return Path(shutil.copytree(finished, case / "run"))


def folder_of_rgb_images(root: Path, classes=("a", "b"), sizes=((12, 12),) * 10, first: tuple | None = None) -> Path:
    rng = np.random.default_rng(0)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / cls / f"{i + 1:02d}.png")
        if first:
            Image.fromarray(rng.integers(0, 256, (first[1], first[0], 3), dtype=np.uint8)).save(root / cls / "00.png")
    return root


def _malicious_checkpoint(case: Path, run: Path) -> list[str]:
    run = copy_run(run, case)
    torch.save({"epoch": 0, "method": RunsCode(case / "ran")}, run / "checkpoints" / "last.pt")
    return ["train", "--resume", "--out", str(run)]


def _malicious_cifar(case: Path, run: Path) -> list[str]:
    batches = case / "data" / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (batches / name).write_bytes(pickle.dumps({b"data": RunsCode(case / "ran"), b"labels": [0]}))
    return TRAIN[:4] + ["cifar10", "--data-dir", str(case / "data"), "--out", str(case / "run")]


def _truncated(name: str, keep: float) -> Callable[[Path, Path], list[str]]:
    def setup(case: Path, run: Path) -> list[str]:
        run = copy_run(run, case)
        weights = run / "encoder.safetensors"
        weights.write_bytes(weights.read_bytes()[: int(weights.stat().st_size * keep)])
        if name == "eval":
            return ["eval", "--run", str(run), "--protocol", "knn"]
        return ["embed", "--run", str(run), "--data", "digits", "--out", str(case / "data" / "f.npy")]

    return setup


def _unwritable(case: Path, run: Path) -> list[str]:
    if os.geteuid() != 0:
        (case / "data").mkdir()
        (case / "data").chmod(0o500)
        return TRAIN + ["--out", str(case / "data" / "run")]
    if os.access("/proc/sys", os.W_OK):
        pytest.skip("running as root with a writable /proc/sys: no unwritable folder to try")
    return TRAIN + ["--out", "/proc/sys/selfsup-run"]


def _with_file(name: str, content: bytes, argv: Callable[[Path, Path], list[str]]) -> Callable[[Path, Path], list[str]]:
    def setup(case: Path, run: Path) -> list[str]:
        run = copy_run(run, case)
        (run / name).write_bytes(content)
        return argv(case, run)

    return setup



def _alias_bomb() -> bytes:
    """Nine levels of ten-way aliases under ``recipe:`` (2.9 KB): 10^9 values once expanded."""
    lines = ["method: simclr", "data: {spec: digits}", "recipe:", "  l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    return ("\n".join(lines) + "\n").encode()


def _config_file(content: bytes) -> Callable[[Path, Path], list[str]]:
    """``train --config`` on a config.yaml holding ``content``, in the watched data folder."""
    def setup(case: Path, run: Path) -> list[str]:
        return ["train", "--config", str(_write(case / "data" / "config.yaml", content)), "--out", str(case / "run")]

    return setup


def _checkpoint(change: Callable[[dict], object]) -> Callable[[Path, Path], list[str]]:
    """``--resume`` of a copy of the finished run whose last.pt holds ``change(its state)``."""
    def setup(case: Path, run: Path) -> list[str]:
        run = copy_run(run, case)
        last = run / "checkpoints" / "last.pt"
        torch.save(change(torch.load(last, weights_only=True)), last)
        return ["train", "--resume", "--out", str(run)]

    return setup


def _narrower(state: dict) -> dict:
    """The checkpoint of a run of another width: its first weight with half the output channels."""
    name = next(k for k, v in state["method"].items() if v.dim() == 4)
    state["method"][name] = state["method"][name][: state["method"][name].shape[0] // 2]
    return state


def _other_method(state: dict) -> dict:
    """The checkpoint of another method: weights this method has not (BYOL's target network)."""
    state["method"]["target_encoder.conv.weight"] = torch.zeros(1)
    return state


def _summary_list(case: Path, run: Path) -> list[str]:
    run = copy_run(run, case)
    (run / "summary.json").write_text("[1, 2]")
    return ["compare", str(run), "--plot", str(case / "data" / "c.png")]


def _set(*assignments: str) -> Callable[[Path, Path], list[str]]:
    def setup(case: Path, run: Path) -> list[str]:
        return TRAIN + ["--out", str(case / "run")] + [x for a in assignments for x in ("--set", a)]

    return setup


CASES: dict[str, Case] = {
    "unknown key": Case(lambda c, r: TRAIN + ["--out", str(c / "run"), "--set", "train.epoch=3"],
                        "unknown config key train.epoch; did you mean train.epochs?"),
    "unknown section": Case(lambda c, r: TRAIN + ["--out", str(c / "run"), "--set", "nosuch.key=1"],
                            "unknown config key nosuch.key"),
    "misspelled loss key": Case(lambda c, r: TRAIN + ["--out", str(c / "run"), "--set", "loss.temprature=0.2"],
                                "did you mean loss.temperature?"),
    "key of another method": Case(lambda c, r: ["train", "--method", "byol", "--data", "digits", "--out",
                                                str(c / "run"), "--set", "loss.temperature=0.2"],
                                  "loss.temperature is not a setting of byol"),
    "word for a number": Case(lambda c, r: TRAIN + ["--out", str(c / "run"), "--set", "backbone.width=abc"],
                              "backbone.width expects a whole number, got 'abc'"),
    "value for a section": Case(lambda c, r: TRAIN + ["--out", str(c / "run"), "--set", "train=3"],
                                "train is a section of config.yaml"),
    "malformed value": Case(lambda c, r: TRAIN + ["--out", str(c / "run"), "--set", "views.scale=[0.2,"],
                            "cannot parse YAML"),
    "out is a file": Case(lambda c, r: TRAIN + ["--out", str(_write(c / "data", b"keep me"))], "is a file, not a folder"),
    "out not writable": Case(_unwritable, "cannot write to"),
    "folder holds a run": Case(lambda c, r: TRAIN + ["--out", str(copy_run(r, c))],
                               "already holds a run: add --resume to continue it, --overwrite to replace it"),
    "resume where no run is": Case(lambda c, r: (c / "run").mkdir() or ["train", "--resume", "--out", str(c / "run")],
                                   "--resume: no run at"),
    "resume changing the model": Case(lambda c, r: ["train", "--resume", "--out", str(copy_run(r, c)), "--set",
                                                    "backbone.width=8"], "backbone.width cannot change"),
    "resume with fewer epochs": Case(lambda c, r: ["train", "--resume", "--out", str(copy_run(r, c)), "--epochs", "1"],
                                     "the run has already trained 2 epoch(s)"),
    "malicious checkpoint": Case(_malicious_checkpoint, "was refused: it references posix.system"),
    "malicious CIFAR batch": Case(_malicious_cifar, "does not match the published checksum"),
    "tampered CIFAR archive": Case(
        lambda c, r: TRAIN[:4] + ["cifar10", "--data-dir", str(_write(c / "data" / "cifar-10-python.tar.gz",
                                                                      b"\x1f\x8b" + bytes(64)).parent),
                                  "--out", str(c / "run")],
        "does not match the published checksum of the cifar10 python-format archive"),
    "malformed config.yaml": Case(_with_file("config.yaml", b"method: [simclr\n", lambda c, r: ["eval", "--run", str(r)]),
                                  "config.yaml is malformed"),
    "truncated encoder (eval)": Case(_truncated("eval", 0.5), "encoder.safetensors is unreadable"),
    "empty encoder (embed)": Case(_truncated("embed", 0.0), "encoder.safetensors is unreadable"),
    "embed other channels": Case(
        lambda c, r: ["embed", "--run", str(copy_run(r, c)), "--data", f"folder:{folder_of_rgb_images(c / 'data')}",
                      "--out", str(c / "f.npy")],
        "holds 3-channel images but the run's encoder was trained on 1-channel images"),
    # issue 13: evaluation protocols, library backbones, rerun from config.yaml, compare, export
    "unknown protocol": Case(lambda c, r: ["eval", "--run", str(copy_run(r, c)), "--protocol", "finetuning"],
                             "unknown protocol 'finetuning'; choose one of: knn, linear, finetune, all"),
    "label fraction above 100 %": Case(
        lambda c, r: ["eval", "--run", str(copy_run(r, c)), "--protocol", "finetune", "--labels", "150%"],
        "--labels 150%: a fraction of the labels is above 0 % and at most 100 %"),
    "too few labels per class": Case(
        lambda c, r: ["eval", "--run", str(copy_run(r, c)), "--protocol", "finetune", "--labels", "0.5%"],
        "--labels 0.5% is 6 of 1257 labelled images, fewer than one per class"),
    "dim on a backbone without stages": Case(
        lambda c, r: ["train", "--method", "dim", "--data", "digits", "--backbone", "vit_tiny", "--out", str(c / "run")],
        "dim needs an encoder with feature_maps(x)"),
    "dim's local map at the last stage": Case(
        lambda c, r: ["train", "--method", "dim", "--data", "digits", "--out", str(c / "run"), "--set",
                      "head.local_stage=3"], "head.local_stage=3: the backbone has 4 stages"),
    "unknown backbone": Case(lambda c, r: TRAIN + ["--out", str(c / "run"), "--backbone", "resnet19"],
                             "unknown backbone 'resnet19'; choose one of: resnet18"),
    "unknown backbone library": Case(lambda c, r: TRAIN + ["--out", str(c / "run"), "--backbone", "keras:resnet50"],
                                     "a library's model is timm:NAME or torchvision:NAME"),
    "config from a newer version": Case(
        lambda c, r: ["train", "--config", str(_write(c / "data" / "config.yaml", (r / "config.yaml").read_bytes()
                                                      .replace(b"config_version: 1\n", b"config_version: 99\n"))),
                      "--out", str(c / "run")],
        "this config.yaml is from a newer selfsup (config_version 99; this one reads up to 1)"),
    "compare what is no run": Case(lambda c, r: (c / "data").mkdir() or ["compare", str(copy_run(r, c)), str(c / "data")],
                                   "is not a run folder (config.yaml missing)"),
    "unknown export format": Case(lambda c, r: ["export", "--run", str(copy_run(r, c)), "--format", "tflite"],
                                  "unknown export format 'tflite'; choose one of: onnx, torchscript"),
    # issue 18: caps on YAML, run length and model size; values that cannot train; files of another kind
    "YAML alias bomb": Case(_config_file(_alias_bomb()), "the YAML's aliases expand to more than 100000 values"),
    "self-referencing YAML alias": Case(_config_file(b"method: simclr\nrecipe: &r {again: *r}\n"),
                                        "refers to a section that holds it"),
    "config.yaml over 1 MiB": Case(_config_file(b"method: simclr\n" + b"# padding\n" * 110_000),
                                   "more than the 1048576 a selfsup config may hold"),
    "deeply nested config.yaml": Case(_config_file(b"method: simclr\nrecipe: " + b"[" * 5000 + b"]" * 5000 + b"\n"),
                                      "the YAML nests deeper than 20 levels"),
    "config.yaml with a nan lr": Case(_config_file(b"method: simclr\ndata: {spec: digits}\noptim: {lr: .nan}\n"),
                                      "optim.lr must be a finite number, got nan"),
    "10^12 epochs": Case(lambda c, r: TRAIN + ["--out", str(c / "run"), "--epochs", "1000000000000"],
                         "steps, more than the 1e+09 a run may take"),
    "resume with another width's checkpoint": Case(_checkpoint(_narrower), "is from another model ("),
    "resume with another method's checkpoint": Case(_checkpoint(_other_method),
                                                    "holds target_encoder.conv.weight, which this model has not"),
    "last.pt holding a list": Case(_checkpoint(lambda state: [1, 2]), "holds a list, not a selfsup checkpoint"),
    "last.pt lacking keys": Case(_checkpoint(lambda state: {"epoch": 1, "method": state["method"]}), "lacks 'step'"),
    "width 100000": Case(_set("backbone.width=100000"), "backbone.width must be >= 1 and <= 1024, got 100000"),
    "a projector of 10^7 units": Case(_set("head.proj_hidden_dim=10000000"), "more than the 4e+09 selfsup builds"),
    "compare on a summary that is a list": Case(_summary_list, "holds a list, not a run's summary"),
    "bench of no steps": Case(lambda c, r: ["bench", "--method", "simclr", "--steps", "0", "--device", "cpu"],
                              "bench --steps must be at least 1, got 0"),
    "temperature 0": Case(_set("loss.temperature=0"), "loss.temperature must be > 0, got 0"),
    "temperature -1": Case(_set("loss.temperature=-1"), "loss.temperature must be > 0, got -1"),
    "lr nan": Case(_set("optim.lr=.nan"), "optim.lr must be a finite number, got nan"),
    "lr inf": Case(_set("optim.lr=.inf"), "optim.lr must be a finite number, got inf"),
    "negative lr": Case(_set("optim.lr=-0.1"), "optim.lr must be >= 0, got -0.1"),
    "momentum 1": Case(_set("optim.momentum=1"), "optim.momentum must be >= 0 and < 1, got 1"),
    "negative weight decay": Case(_set("optim.weight_decay=-1e-4"), "optim.weight_decay must be >= 0"),
    "nan inside a per-view list": Case(_set("views.scale=[0.2, .nan]"), "views.scale must be a finite number"),
    "train section replaced by a list": Case(_set("train=[]"), "train is a section of config.yaml"),
}


def _snapshot(path: Path) -> dict[str, str] | None:
    if not path.exists():
        return None
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


def _run(argv: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SELFSUP_CACHE": str(cache)}
    env.pop("SELFSUP_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "selfsup.cli", *argv], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="session")
def outcomes(tmp_path_factory) -> dict[str, tuple]:
    """Every case set up, run in parallel (4 at a time), and its watched paths before and after."""
    root = tmp_path_factory.mktemp("bad_inputs")
    finished = root / "finished"
    fit("simclr", "digits", out_dir=finished, assignments=TINY, datasets=digits())
    prepared = {}
    for name, case in CASES.items():
        folder = root / name.replace(" ", "_").replace(".", "")
        folder.mkdir()
        try:
            argv = case.setup(folder, finished)
        except pytest.skip.Exception as skip:
            prepared[name] = skip
            continue
        prepared[name] = (argv, folder, {w: _snapshot(folder / w) for w in case.watched})
    runnable = {n: p for n, p in prepared.items() if isinstance(p, tuple)}
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(zip(runnable, pool.map(lambda p: _run(p[0], root / "cache"), runnable.values())))
    out = {}
    for name, item in prepared.items():
        if not isinstance(item, tuple):
            out[name] = item
            continue
        _, folder, before = item
        after = {w: _snapshot(folder / w) for w in before}
        out[name] = (results[name], before, after, folder)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_ends_in_one_line_exit_2_and_nothing_lost(name, outcomes):
    if isinstance(outcomes[name], BaseException):
        pytest.skip(str(outcomes[name]))
    result, before, after, folder = outcomes[name]
    lines = result.stderr.strip().splitlines()
    assert result.returncode == CASES[name].code, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("selfsup: error: "), lines
    assert CASES[name].says in lines[0], lines[0]
    assert after == before  # every file as it was; a folder that did not exist still does not
    assert not (folder / "ran").exists()  # no crafted file ran its command


def test_one_class_folder_with_a_tiny_first_image_trains_and_says_so(tmp_path):
    """A single class warns (scores mean nothing); a 1x1 image sorting first no longer sets the size: the majority does."""
    data = folder_of_rgb_images(tmp_path / "imgs", classes=("only",), sizes=((12, 12),) * 24, first=(1, 1))
    result = _run(TRAIN[:4] + [f"folder:{data}", "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8",
                               "--set", "train.device=cpu", "--set", "train.progress=false", "--set", "eval.plots=false",
                               "--set", "backbone.width=4"], tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "single class ('only')" in result.stderr
    assert "holds images of 2 sizes (12x12 (" in result.stderr and "resized and centre-cropped to 12x12" in result.stderr
    assert (tmp_path / "run" / "encoder.safetensors").is_file()


def test_numbers_in_exponent_form_are_numbers_and_types_are_checked():
    from selfsup.config.build import parse_value
    from selfsup.config.schema import check_assignments

    assert parse_value("1e-3") == 0.001 and parse_value("1e6") == 1e6 and parse_value("[1e-3, 2]") == [0.001, 2]
    check_assignments("simclr", ["optim.lr=1e-3", "optim.weight_decay=1e6", "loss.temperature=5e-1",
                                 "data.workers=auto", "data.workers=4", "views.blur_p=[0.5, 0.1]", "recipe.fit=false"])
    for assignment, message in [("optim.lr=fast", "optim.lr expects a number, got 'fast'"),
                                ("train.epochs=2.5", "train.epochs expects a whole number, got 2.5"),
                                ("data.workers=many", "data.workers expects a whole number or auto"),
                                ("eval.plots=3", "eval.plots expects true or false")]:
        with pytest.raises(ValueError, match=message):
            check_assignments("simclr", [assignment])


def test_a_malicious_cifar_batch_with_a_matching_checksum_is_still_refused_unexecuted(tmp_path, monkeypatch):
    """The second line of defence: were the published checksum ever to match, the restricted unpickler refuses."""
    from selfsup.data import load_dataset
    from selfsup.data.cifar import FORMATS

    _malicious_cifar(tmp_path, tmp_path)
    batches = tmp_path / "data" / "cifar-10-batches-py"
    for file in batches.iterdir():
        monkeypatch.setitem(FORMATS["cifar10"].md5, file.name, hashlib.md5(file.read_bytes()).hexdigest())
    with pytest.raises(ValueError, match="data_batch_1 was refused: it asks to run posix.system") as error:
        load_dataset("cifar10", tmp_path / "data", "train", progress=False)
    assert "\n" not in str(error.value) and not (tmp_path / "ran").exists()


def test_resume_and_overwrite_together_are_refused(tmp_path):
    with pytest.raises(ValueError, match="choose one"):
        fit(out_dir=tmp_path, resume=True, overwrite=True)
