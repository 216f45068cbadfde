"""``train.compile=step``: the whole forward half of a step as one compiled graph, with the eager step's losses.

Inductor's first compilation of even a width-4 ResNet-18 step takes about two minutes on this 2-core CPU,
so the equivalence is checked with ``aot_eager``: Dynamo's trace and AOTAutograd's forward and backward
graphs, run by eager kernels. That is what ``step`` changes about the computation; inductor's generated
kernels are left to a GPU session (benchmarks/gpu_suite.py compiles SimCLR's step there). Every other
image method was checked the same way by hand with the ``eager`` backend (one graph, no break; the
same losses over 3 steps; SwAV with its queue filled and used): 5-25 s each here, too slow for the suite.
"""

from __future__ import annotations

import pytest
import torch

from selfsup.commands.bench import synthetic_images
from selfsup.config.schema import check_assignments
from selfsup.train.setup import Datasets, make_config
from selfsup.train.step import compile_target
from selfsup.train.trainer import Trainer

TINY = ["backbone.width=4", "train.batch_size=16", "train.epochs=2", "train.device=cpu", "train.progress=false",
        "eval.every=0", "eval.plots=false"]


def _losses(method: str, extra: list[str], steps: int = 3) -> tuple[list[float], list[torch.Tensor]]:
    data = synthetic_images(64)
    cfg = make_config(method, "synthetic", data, assignments=TINY + extra)
    trainer = Trainer(cfg, Datasets(data, data, data))
    trainer.method.train()
    trainer.method.on_epoch_start(0)
    order = trainer._epoch_order()
    losses = []
    for i in range(steps):
        indices = order[i * 16 : (i + 1) * 16]
        _, metrics = trainer._step(indices, trainer.pretrain_data[indices])
        losses.append(metrics["loss"].item())
    return losses, [p.detach().clone() for p in trainer.method.parameters()]


def test_a_compiled_step_gives_the_eager_step_losses_and_weights():
    torch._dynamo.reset()
    eager, eager_weights = _losses("simclr", [])
    compiled, compiled_weights = _losses("simclr", ["train.compile=step", "train.compile_backend=aot_eager"])
    assert compiled == pytest.approx(eager, rel=1e-5)
    for a, b in zip(compiled_weights, eager_weights):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert eager[0] != pytest.approx(eager[-1], rel=1e-3), "the steps must train something to compare"


def test_compile_settings_are_named_values():
    assert [compile_target(v) for v in (False, True, "backbone", "step")] == [None, "backbone", "backbone", "step"]
    with pytest.raises(ValueError, match="train.compile must be false, true, backbone or step"):
        compile_target("fast")
    check_assignments("simclr", ["train.compile=step", "train.compile=true", "train.compile_mode=reduce-overhead"])
    with pytest.raises(ValueError, match="train.compile"):
        check_assignments("simclr", ["train.compile=fast"])
