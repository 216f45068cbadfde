"""train.precision / train.channels_last = auto: bf16 autocast and NHWC where the hardware runs them fast."""

from __future__ import annotations

import pytest
import torch

import selfsup.train.numerics as numerics
from selfsup.commands.bench import synthetic_images
from selfsup.data.base import ArrayDataset
from selfsup.train.numerics import describe_cpu_autocast, resolve_numerics
from selfsup.train.setup import Datasets, make_config
from selfsup.train.trainer import Trainer

CPU, GPU = torch.device("cpu"), torch.device("cuda")
CIFAR_SIZED, DIGIT_SIZED = synthetic_images(8, size=32), synthetic_images(8, size=8, channels=1)
SEQUENCES = ArrayDataset(data=torch.zeros(8, 1, 64), labels=torch.zeros(8, dtype=torch.long), classes=["a"],
                         name="seq", kind="sequence", mean=(0.0,), std=(1.0,))


def train(precision="auto", channels_last="auto"):
    return {"precision": precision, "channels_last": channels_last}


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_on_a_cpu_is_bf16_and_nhwc_for_resnet_sized_images_only(monkeypatch, native_bf16):
    monkeypatch.setattr(numerics, "cpu_has_native_bf16", lambda: native_bf16)
    cifar = resolve_numerics(train(), CPU, CIFAR_SIZED)
    assert (cifar.bf16, cifar.channels_last, cifar.dtype) == (native_bf16, True, torch.float32)
    for small in (DIGIT_SIZED, SEQUENCES):  # 8 px digits and sequences keep fp32, NCHW
        assert resolve_numerics(train(), CPU, small) == numerics.Numerics(False, torch.float32, False)
    assert resolve_numerics(train(), GPU, DIGIT_SIZED) == numerics.Numerics(True, torch.float32, True)
    assert resolve_numerics(train(), GPU, SEQUENCES).channels_last is False  # no image, no NHWC


def test_set_values_win_over_auto(monkeypatch):
    monkeypatch.setattr(numerics, "cpu_has_native_bf16", lambda: True)
    assert resolve_numerics(train("fp32"), CPU, CIFAR_SIZED) == numerics.Numerics(False, torch.float32, True)
    assert resolve_numerics(train("fp32", False), CPU, CIFAR_SIZED) == numerics.Numerics(False, torch.float32, False)
    assert resolve_numerics(train("fp64"), CPU, CIFAR_SIZED).dtype == torch.float64
    assert resolve_numerics(train("bf16", True), CPU, DIGIT_SIZED) == numerics.Numerics(True, torch.float32, True)
    with pytest.raises(ValueError, match="unknown train.precision 'fp16'; use auto, bf16, fp32, fp64"):
        resolve_numerics(train("fp16"), CPU, CIFAR_SIZED)


def test_a_cpu_run_that_chose_bf16_by_itself_says_so_once(monkeypatch):
    monkeypatch.setattr(numerics, "cpu_has_native_bf16", lambda: True)
    chosen = resolve_numerics(train(), CPU, CIFAR_SIZED)
    assert "train.precision=fp32" in describe_cpu_autocast(chosen, train(), CPU)
    assert describe_cpu_autocast(resolve_numerics(train("bf16"), CPU, CIFAR_SIZED), train("bf16"), CPU) is None
    assert describe_cpu_autocast(resolve_numerics(train(), GPU, CIFAR_SIZED), train(), GPU) is None


def test_the_trainer_steps_in_bf16_nhwc_on_32px_images_and_scores_close_to_fp32(monkeypatch, capsys):
    """The step's convolutions really run in bf16 and NHWC, and the loss stays within bf16's rounding of fp32's."""
    monkeypatch.setattr(numerics, "cpu_has_native_bf16", lambda: True)
    data = synthetic_images(64, size=32)
    datasets = Datasets(pretrain=data, train=data, test=data)
    settings = ["backbone.name=resnet18", "backbone.stem=cifar", "backbone.width=4", "train.batch_size=32",
                "train.epochs=1", "train.device=cpu", "eval.every=0", "head.proj_hidden_dim=32", "head.proj_out_dim=16"]
    losses = {}
    for precision in ("auto", "fp32"):
        cfg = make_config("simclr", "synthetic", data, assignments=settings + [f"train.precision={precision}"],
                          fit_to_run=False)
        trainer = Trainer(cfg, datasets)
        conv_inputs = []
        first_conv = next(m for m in trainer.encoder.modules() if isinstance(m, torch.nn.Conv2d))
        first_conv.register_forward_hook(lambda module, inputs, output: conv_inputs.append(output))
        trainer._train(1, 1)
        assert trainer.channels_last
        assert conv_inputs[0].dtype == (torch.bfloat16 if precision == "auto" else torch.float32)
        assert conv_inputs[0].is_contiguous(memory_format=torch.channels_last)
        losses[precision] = trainer.history[-1]["loss"]
    assert "training in bf16 autocast on this CPU" in capsys.readouterr().err
    assert losses["auto"] == pytest.approx(losses["fp32"], rel=2e-2)
