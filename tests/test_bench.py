"""selfsup bench: the baseline replays exactly the backbone passes the method makes."""

import pytest
import torch

from selfsup.commands.bench import bench, record_backbone_passes, synthetic_images
from selfsup.data.views import build_views
from selfsup.train.setup import build_method, make_config

TINY = ["backbone.width=4"]


def _passes(method: str, batch: int = 8):
    data = synthetic_images(batch * 4)  # 4 steps an epoch: the recipe keeps the batch that the step below runs
    cfg = make_config(method, "synthetic", data, assignments=TINY)
    model = build_method(cfg, data, steps_per_epoch=2)
    views = build_views(cfg["views"], data.channels, data.input_size, data.mean, data.std)
    x = views(data.data[:batch])

    def step():
        model(x, data.labels[:batch], torch.arange(batch)).loss.backward()

    return x, record_backbone_passes(model, step)


def test_simclr_backbone_work_is_one_trained_pass_over_both_views():
    views, passes = _passes("simclr")
    assert [p.with_grad for p in passes] == [True]
    assert torch.equal(passes[0].inputs, torch.cat(views))


def test_byol_backbone_work_includes_the_target_forward_without_gradient():
    views, passes = _passes("byol")  # one pass per view (BYOL's apply_once_fn), online then target
    assert [p.with_grad for p in passes] == [True, True, False, False]
    for p, view in zip(passes, views + views):
        assert torch.equal(p.inputs, view)


def test_moco_backbone_work_is_a_trained_query_pass_and_a_key_forward():
    views, passes = _passes("moco")
    trained = [p for p in passes if p.with_grad]
    keys = [p for p in passes if not p.with_grad]
    assert trained and keys
    assert sum(p.inputs.shape[0] for p in trained) == sum(p.inputs.shape[0] for p in keys)


def test_deep_infomax_backbone_work_is_its_stage_map_passes_which_replay_answers():
    """DIM reads every stage's map (``feature_maps``), not the pooled output: one trained pass per view."""
    from selfsup.commands.bench import replaying

    views, passes = _passes("dim")
    assert [p.with_grad for p in passes] == [True, True] and all(isinstance(p.outputs, list) for p in passes)
    for p, view in zip(passes, views):
        assert torch.equal(p.inputs, view) and len(p.outputs) == 4
    data = synthetic_images(32)
    model = build_method(make_config("dim", "synthetic", data, assignments=TINY), data, steps_per_epoch=2)
    with replaying(model, passes):
        maps = model.encoder.feature_maps(views[1] * 0)
        assert model.encoder(views[0] * 0) is not None and "feature_maps" in vars(model.encoder)
    assert "feature_maps" not in vars(model.encoder)
    assert all(torch.equal(a, b) and a.requires_grad for a, b in zip(maps, passes[0].outputs))
    assert bench("dim", batch_size=8, steps=1, warmup=1, device="cpu", assignments=TINY)["backbone_passes"] == (
        ["fwd+bwd 8x3x32x32"] * 2)


def test_bench_reports_both_ratios():
    result = bench("byol", batch_size=8, steps=1, warmup=1, device="cpu", assignments=TINY)
    assert result["overhead"] == pytest.approx(result["step_ms"] / result["backbone_ms"])
    assert result["overhead_vs_two_views"] == pytest.approx(result["step_ms"] / result["two_view_ms"])
    assert result["backbone_passes"] == ["fwd+bwd 8x3x32x32"] * 2 + ["fwd 8x3x32x32"] * 2


def test_replaying_answers_encoder_calls_with_the_recorded_outputs_without_running_them():
    from selfsup.commands.bench import replaying

    data = synthetic_images(16)
    cfg = make_config("byol", "synthetic", data, assignments=TINY)
    model = build_method(cfg, data, steps_per_epoch=2)
    x = build_views(cfg["views"], data.channels, data.input_size, data.mean, data.std)(data.data[:8])
    args = (x, data.labels[:8], torch.arange(8))
    passes = record_backbone_passes(model, lambda: model(*args))
    expected = model(*args).loss
    calls = []
    handles = [m.register_forward_pre_hook(lambda *_: calls.append(1)) for m in list(model.encoder.modules())[1:]]
    with replaying(model, passes):
        replayed = model(*args).loss
        replayed.backward()
    assert not calls, "no encoder layer may run while replaying"
    assert replayed.item() == pytest.approx(expected.item(), rel=1e-5)
    assert all(p.grad is None for p in model.encoder.parameters())
    assert any(p.grad is not None for p in model.predictor.parameters())
    for handle in handles:
        handle.remove()
    assert "forward" not in vars(model.encoder), "the encoders' own forward is restored"
