"""``selfsup export``: a ResNet run into torchvision's and timm's models, and the preprocessing beside every export.

The state dicts are loaded into the real libraries' ResNets (``tests/torchvision_cpu.py`` makes torchvision,
and with it timm, importable on a CPU-only machine) after the lines the export's JSON lists, and must give
the pooled features of ``load_run``'s encoder to 1e-5. What cannot be exported says so in one line.
"""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest
import torch
from torch import nn

from selfsup.commands.evaluation import load_run
from selfsup.commands.export import export
from selfsup.evaluate.features import normalize_batch
from selfsup.nn.resnet import resnet18, resnet50, torchvision_state_dict
from selfsup.train.trainer import fit
from tests.helpers import digits
from tests.torchvision_cpu import import_torchvision

QUICK = ["train.epochs=1", "train.device=cpu", "train.progress=false", "eval.every=0", "eval.plots=false",
         "eval.linear_epochs=2", "eval.knn_k=20"]


@pytest.fixture(scope="session")
def resnet_run(tmp_path_factory):
    """A full-width (64) CIFAR-stem ResNet-18 trained one epoch on digits (one channel)."""
    out = tmp_path_factory.mktemp("export") / "resnet"
    fit("simclr", "digits", out_dir=out, datasets=digits(),
        assignments=QUICK + ["backbone.name=resnet18", "backbone.stem=cifar", "backbone.width=64"])
    return out


def library_model(fmt: str, recipe: dict) -> nn.Module:
    """The library's ResNet built and changed as the export's JSON says (the lines run as written)."""
    import_torchvision()
    import timm  # noqa: F401  (the JSON's constructor names it)
    import torchvision  # noqa: F401

    scope = {"torch": torch, "torchvision": sys.modules["torchvision"], "timm": sys.modules["timm"]}
    exec(f"model = {recipe['model']}", scope)
    for line in recipe["before_loading"]:
        exec(line, scope)
    return scope["model"]


@pytest.mark.parametrize("fmt", ["torchvision", "timm"])
def test_a_resnet_run_loads_into_the_library_model_and_gives_the_same_features(resnet_run, tmp_path, fmt, capsys):
    target = tmp_path / f"encoder.{fmt}.pt"
    result = export(resnet_run, fmt, target)
    assert "CIFAR stem" in capsys.readouterr().err
    recipe = json.loads((tmp_path / f"encoder.{fmt}.pt.json").read_text())
    assert recipe == json.loads(json.dumps(result))
    assert recipe["channels"] == 1 and recipe["input_shape"] == [None, 1, 8, 8] and len(recipe["mean"]) == 1
    assert "model.maxpool = torch.nn.Identity()" in recipe["before_loading"]
    model = library_model(fmt, recipe)
    model.load_state_dict(torch.load(target, weights_only=True), strict=True)
    _, encoder, test = load_run(resnet_run)
    x = normalize_batch(test.data[:64], test)
    with torch.no_grad():
        ours, theirs = encoder.eval()(x), model.eval()(x)
    assert theirs.shape == ours.shape == (64, 512)
    assert torch.allclose(theirs, ours, atol=1e-5), (theirs - ours).abs().max()


@pytest.mark.parametrize("build, stem", [(resnet18, "imagenet"), (resnet50, "cifar")])
def test_the_renaming_covers_every_tensor_of_both_depths_and_stems(build, stem):
    torchvision = import_torchvision()
    ours = build(stem=stem).eval()
    for module in ours.modules():  # statistics and affine terms away from their initial values
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_()
    theirs = getattr(torchvision.models, build.__name__)()
    theirs.fc = nn.Identity()
    if stem == "cifar":
        theirs.conv1, theirs.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    theirs.load_state_dict(torchvision_state_dict(ours), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(theirs.eval()(x), ours(x), atol=1e-5)


def test_onnx_and_torchscript_carry_the_preprocessing(resnet_run, tmp_path):
    export(resnet_run, "onnx", tmp_path / "e.onnx")
    props = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "e.onnx")).metadata_props}
    assert props["input_shape"] == [None, 1, 8, 8] and props["normalise"].startswith("(pixels / 255 - mean) / std")
    assert props["mean"] == json.loads((tmp_path / "e.onnx.json").read_text())["mean"]
    export(resnet_run, "torchscript", tmp_path / "e.pt")
    extra = {"preprocessing.json": ""}
    torch.jit.load(str(tmp_path / "e.pt"), _extra_files=extra)
    assert json.loads(extra["preprocessing.json"])["std"] == props["std"]


def test_what_has_no_library_counterpart_is_refused_in_one_line(tmp_path):
    convnet = tmp_path / "convnet"
    fit("simclr", "digits", out_dir=convnet, datasets=digits(), assignments=QUICK + ["backbone.width=4"])
    narrow = tmp_path / "narrow"
    fit("simclr", "digits", out_dir=narrow, datasets=digits(),
        assignments=QUICK + ["backbone.name=resnet18", "backbone.width=4"])
    for run, says in [(convnet, "this run's backbone is convnet, which torchvision has no model of"),
                      (narrow, "torchvision's resnet18 has width 64, this run's has 4")]:
        result = subprocess.run([sys.executable, "-m", "selfsup.cli", "export", "--run", str(run), "--format",
                                 "torchvision"], capture_output=True, text=True, timeout=300)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and says in lines[0], result.stderr
        assert not (run / "encoder.torchvision.pt").exists()
