"""A run trained with a user's own encoder (``fit(..., encoder=MODULE)``) stays usable: config.yaml names its class,
the run holds its TorchScript program, and eval, export and ``load_encoder`` work from it; without a program they
say in one line how to load the weights into the module from Python."""

from __future__ import annotations

import io
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import selfsup
from selfsup.cli import main
from selfsup.evaluate.features import normalize_batch
from selfsup.run.custom_encoder import PROGRAM
from selfsup.run.files import MANIFEST
from tests.helpers import QUIET, digits

SETTINGS = QUIET + ["train.epochs=1", "train.batch_size=128"]


class SmallNet(nn.Module):
    """A scriptable encoder: conv, batch norm, 2x2 pooled grid, linear."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width * 4, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 2).flatten(1))


class HostRoundTrip(SmallNet):
    """Its input passes through numpy: TorchScript cannot compile that, and a trace freezes the example batch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(x.detach().cpu().numpy())).to(x.device)
        return super().forward(x)


def digits_batch() -> torch.Tensor:
    """64 held-out digits, normalised as the encoder trained."""
    return normalize_batch(digits().test.data[:64], digits().pretrain)


def one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="session")
def scripted_run(tmp_path_factory):
    torch.manual_seed(0)
    net = SmallNet()
    run = tmp_path_factory.mktemp("custom") / "run"
    summary = selfsup.fit("simclr", "digits", out_dir=run, encoder=net, datasets=digits(), assignments=SETTINGS)
    return run, net.eval(), summary


def test_the_run_records_the_class_and_a_program_that_loads_without_its_code(scripted_run, capsys):
    run, net, summary = scripted_run
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["backbone"] == {"name": "custom", "class": f"{SmallNet.__module__}.SmallNet"}
    assert not any(key.startswith("backbone.") for key in cfg["recipe"].get("changes", {}))
    entries = json.loads((run / MANIFEST).read_text())["entries"]
    assert PROGRAM in entries and "encoder.safetensors" in entries and (run / PROGRAM).is_file()

    loaded = selfsup.load_encoder(run)
    assert isinstance(loaded, torch.jit.ScriptModule) and not loaded.training
    assert loaded.preprocessing["input_shape"] == [None, 1, 8, 8]
    x = digits_batch()
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), rtol=0, atol=1e-6)

    assert main(["eval", "--run", str(run), "--protocol", "knn"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["knn_top1"] == pytest.approx(summary["knn_top1"], abs=1e-6)
    assert main(["embed", "--run", str(run), "--data", "digits", "--split", "test", "--out",
                 str(run.parent / "f.npy")]) == 0
    features = np.load(run.parent / "f.npy")
    with torch.no_grad():
        assert np.allclose(features[:64], net(x).numpy(), rtol=0, atol=1e-5) and features.shape == (540, 16)


def test_export_works_from_the_program_and_refuses_resnet_formats(scripted_run, capsys):
    run, net, _ = scripted_run
    assert main(["export", "--run", str(run), "--format", "onnx"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (run / "encoder.onnx").is_file() and result["max_abs_difference"] <= 1e-4
    assert result["checked_images"] == len(digits().test) and result["features"] == 16
    assert main(["export", "--run", str(run), "--format", "torchscript"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        exported = torch.jit.load(str(run / "encoder.torchscript.pt"))
    with torch.no_grad():
        assert torch.allclose(exported(digits_batch()), net(digits_batch()), rtol=0, atol=1e-6)
    capsys.readouterr()
    err = one_line_error(capsys, ["export", "--run", str(run), "--format", "torchvision"])
    assert "custom encoder" in err and "--format onnx or torchscript" in err
    assert not (run / "encoder.torchvision.pt").exists()


def test_resuming_or_rerunning_from_the_command_line_says_to_use_python(scripted_run, capsys, tmp_path):
    run, _, _ = scripted_run
    err = one_line_error(capsys, ["train", "--resume", "--out", str(run), "--epochs", "2"])
    assert f"({SmallNet.__module__}.SmallNet) that selfsup cannot rebuild" in err
    assert "resume it from Python with selfsup.fit(" in err and "encoder=SmallNet(...)" in err
    err = one_line_error(capsys, ["train", "--config", str(run / "config.yaml"), "--out", str(tmp_path / "again")])
    assert "rerun it from Python" in err and not (tmp_path / "again").exists()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 1  # the run is unchanged

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    net = SmallNet()
    selfsup.fit(out_dir=copy, resume=True, encoder=net, assignments=["train.epochs=2"])
    assert yaml.safe_load((copy / "config.yaml").read_text())["train"]["epochs"] == 2
    with torch.no_grad():
        assert torch.allclose(selfsup.load_encoder(copy)(digits_batch()), net.eval()(digits_batch()), rtol=0, atol=1e-6)
    selfsup.fit(out_dir=copy, resume=True, encoder=HostRoundTrip(), assignments=["train.epochs=3"])
    assert not (copy / PROGRAM).exists()  # the program of the epoch-2 weights is not left beside the new ones
    assert "could not be saved as a TorchScript program" in capsys.readouterr().err
    assert "cannot rebuild" in one_line_error(capsys, ["eval", "--run", str(copy), "--protocol", "knn"])


def test_without_a_program_the_commands_say_how_to_load_it_in_python(scripted_run, capsys, tmp_path):
    """The run is replaced (--overwrite) by one whose encoder TorchScript cannot hold: the old program must go too."""
    run = tmp_path / "run"
    shutil.copytree(scripted_run[0], run)
    torch.manual_seed(0)
    net = HostRoundTrip()
    summary = selfsup.fit("simclr", "digits", out_dir=run, encoder=net, datasets=digits(), assignments=SETTINGS,
                          overwrite=True)
    assert "could not be saved as a TorchScript program" in capsys.readouterr().err
    assert not (run / PROGRAM).exists() and (run / "encoder.safetensors").is_file()

    line = (f"{run} was trained with a custom encoder ({HostRoundTrip.__module__}.HostRoundTrip) that selfsup cannot "
            f"rebuild: load it in Python with selfsup.load_encoder('{run}', encoder=HostRoundTrip(...))")
    assert one_line_error(capsys, ["eval", "--run", str(run), "--protocol", "knn"]) == f"selfsup: error: {line}"
    assert one_line_error(capsys, ["export", "--run", str(run), "--format", "onnx"]) == f"selfsup: error: {line}"
    with pytest.raises(ValueError, match="cannot rebuild"):
        selfsup.load_encoder(run)

    loaded = selfsup.load_encoder(run, encoder=HostRoundTrip())
    with torch.no_grad():
        assert torch.allclose(loaded(digits_batch()), net.eval()(digits_batch()), rtol=0, atol=1e-6)
    assert selfsup.evaluate_run(run, "knn", encoder=HostRoundTrip())["knn_top1"] == pytest.approx(
        summary["knn_top1"], abs=1e-6)
    with pytest.raises(ValueError, match=r"reshaped conv\.weight \[8, 1, 3, 3\] there, \[4, 1, 3, 3\] here") as error:
        selfsup.load_encoder(run, encoder=HostRoundTrip(width=4))
    assert len(str(error.value).splitlines()) == 1
    with pytest.raises(ValueError, match=r"missing extra\.weight, extra\.bias; unexpected bn\.\w+, .* and 6 more\)"):
        selfsup.load_encoder(run, encoder=nn.ModuleDict({"extra": nn.Linear(2, 2)}))


class TraceOnly(SmallNet):
    """Looks its layers up by a name built at run time: TorchScript cannot compile that, a trace records the calls."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(getattr(self, "b" + "n")(self.conv(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 2).flatten(1))


@pytest.mark.parametrize("module, kept", [(SmallNet, True), (TraceOnly, True), (HostRoundTrip, False)])
def test_a_program_is_scripted_else_traced_and_kept_only_if_it_gives_the_module_features(module, kept, capsys):
    from selfsup.run.custom_encoder import compile_program

    torch.manual_seed(0)
    net = module().eval()
    program = compile_program(net, digits().pretrain)
    assert (program is not None) == kept
    if program is None:
        note = capsys.readouterr().err
        assert "torch.jit.script: " in note and "torch.jit.trace: " in note and len(note.splitlines()) == 1
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(io.BytesIO(program))
    assert capsys.readouterr().err == ""
    with torch.no_grad():
        assert torch.allclose(loaded(digits_batch()), net(digits_batch()), rtol=0, atol=1e-6)
