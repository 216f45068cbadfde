"""CPC learns on GunPoint (linear probe beats the raw series and the random-init encoder); DIM trains."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from selfsup.data.sequence_views import build_sequence_views, normalize
from selfsup.data.sequences import load_ucr
from selfsup.losses import cpc, deep_infomax
from selfsup.methods import preset
from selfsup.methods.base import RunInfo
from selfsup.methods.cpc import CPC
from selfsup.methods.dim import DeepInfoMax
from selfsup.nn.resnet import resnet18
from selfsup.nn.sequence import conv_gru


def _probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return classifier.fit(train_x, train_y).score(test_x, test_y)


@torch.no_grad()
def _features(encoder: torch.nn.Module, data) -> np.ndarray:
    encoder.eval()
    return encoder(normalize(data.data, data.mean, data.std)).numpy()


def _cpc(encoder, train, steps=4, epochs=1) -> CPC:
    info = RunInfo(encoder.out_dim, len(train), train.num_classes, 2, epochs, train.channels, train.input_size)
    return CPC(encoder, {"head": {"prediction_steps": steps}, "loss": {}}, info)


def test_cpc_on_gunpoint_beats_raw_series_and_random_init():
    torch.manual_seed(0)
    train, test = load_ucr("GunPoint", "train"), load_ucr("GunPoint", "test")
    encoder = conv_gru(1, width=64, context_dim=64, strides=[2, 2, 2], kernels=[4, 4, 4], input_size=150)
    random_init = copy.deepcopy(encoder)
    method = _cpc(encoder, train)
    views = build_sequence_views({"preset": "sequence_cpc"}, 1, 150, train.mean, train.std)
    optimizer = torch.optim.Adam(method.parameters(), lr=2e-3)
    losses = []
    for _ in range(30):
        for batch in torch.randperm(len(train)).view(2, 25):
            out = method(views(train.data[batch]))
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
            losses.append(out.loss.item())
    labels = train.labels.numpy(), test.labels.numpy()
    learned = _probe_accuracy(_features(encoder, train), labels[0], _features(encoder, test), labels[1])
    untrained = _probe_accuracy(_features(random_init, train), labels[0], _features(random_init, test), labels[1])
    raw = _probe_accuracy(train.data.flatten(1).numpy(), labels[0], test.data.flatten(1).numpy(), labels[1])
    assert np.mean(losses[-6:]) < np.mean(losses[:6]) - 1.0
    assert learned > raw + 0.05, (learned, raw)
    assert learned > untrained, (learned, untrained)


def test_cpc_step_output_and_loss_wiring():
    torch.manual_seed(0)
    train = load_ucr("GunPoint", "train")
    encoder = conv_gru(1, width=16, context_dim=8, strides=[2, 2, 2], kernels=[4, 4, 4])
    method = _cpc(encoder, train, steps=3)
    x = torch.randn(6, 1, 150)
    out = method([x])
    z = encoder.latents(x)
    c = encoder.contexts(z)
    assert torch.allclose(out.loss, cpc(c, z, method.predictors))
    assert out.features.shape == (6, 8) and torch.allclose(out.features, encoder(x))
    assert out.embeddings[0].shape == out.embeddings[1].shape == (6, 16)
    out.loss.backward()
    assert all(p.grad is not None for p in method.predictors.parameters())
    with pytest.raises(ValueError, match="head.prediction_steps below 18"):
        _cpc(conv_gru(1, width=16, context_dim=8, strides=[2, 2, 2], kernels=[4, 4, 4]), train, steps=18)


def test_cpc_sequence_preset_builds_a_working_encoder():
    from selfsup.nn.backbones import build_backbone

    section = preset("cpc")["sequence"]
    encoder = build_backbone(section["backbone"], in_channels=1, input_size=150)
    assert encoder.latents(torch.zeros(2, 1, 150)).shape[1] > section["head"]["prediction_steps"]
    assert section["views"]["preset"] == "sequence_cpc"


def test_image_cpc_patch_grid_row_causal_context_and_training():
    torch.manual_seed(0)
    x = _tiny_images()
    backbone = resnet18(width=4, in_channels=1)
    info = RunInfo(backbone.out_dim, len(x), 10, 1, 1, 1, 16)
    head = {"prediction_steps": 2, "patch_size": 4, "patch_stride": 2}
    method = CPC(backbone, {"head": head, "loss": {}}, info)
    method.eval()
    grid = method.encoder.grid(x)
    assert grid.shape == (32, 7, 7, backbone.out_dim)  # (16 - 4) / 2 + 1 patches per side
    assert torch.allclose(grid[:, 2, 3], backbone(x[:, :, 4:8, 6:10]), atol=1e-5)
    assert torch.allclose(method.encoder(x), grid.mean(dim=(1, 2)), atol=1e-6)
    changed = x.clone()
    changed[:, :, 10:] += 1.0  # touches patch rows 4-6 only ...
    c, c_changed = method.context(grid), method.context(method.encoder.grid(changed))
    assert torch.allclose(c[:, :4], c_changed[:, :4], atol=1e-6)  # ... so the contexts of rows 0-3 are unchanged
    assert not torch.allclose(c[:, 6], c_changed[:, 6])

    method.train()
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        out = method([x])
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert out.features.shape == (32, backbone.out_dim) and out.embeddings[0].shape == (32, backbone.out_dim)
    assert losses[-1] < losses[0] - 0.2, losses
    with pytest.raises(ValueError, match="head.patch_size"):
        CPC(resnet18(width=4, in_channels=1), {"head": {"prediction_steps": 2}, "loss": {}}, info)


def _tiny_images(n=32, size=16) -> torch.Tensor:
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images[:n], dtype=torch.float32)[:, None] / 16.0
    return torch.nn.functional.interpolate(images, size=size, mode="bilinear", align_corners=False)


def test_dim_forward_backward_and_loss_decreases():
    torch.manual_seed(0)
    x = _tiny_images()
    encoder = resnet18(width=4, in_channels=1)
    info = RunInfo(encoder.out_dim, len(x), 10, 1, 1, 1, 16)
    method = DeepInfoMax(encoder, {"head": {"mi_units": 16, "local_stage": 1}, "loss": {"estimator": "jsd"}}, info)
    views = [x, x.flip(3)]
    out = method(views)
    local, features = method._represent(x)
    expected = deep_infomax(method.local_encoder(local), method.global_encoder(features), estimator="jsd")
    layer2 = encoder.layers[1](encoder.layers[0](encoder.stem(x)))  # the local map: stage 1 of 4, 8x8 at 16 px
    assert torch.allclose(local, layer2, atol=1e-6) and local.shape == (32, 8, 8, 8)
    assert torch.allclose(features, encoder(x), atol=1e-5)
    assert out.features.shape == (32, encoder.out_dim) and out.embeddings[0].shape == (32, 16)
    assert torch.isfinite(out.loss) and out.loss.item() == pytest.approx(
        (expected.item() + deep_infomax(*_encoded(method, x.flip(3))).item()) / 2, rel=1e-4
    )
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss = method(views).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert encoder.stem[0].weight.grad.abs().sum() > 0
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses


def _encoded(method: DeepInfoMax, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    local, features = method._represent(x)
    return method.local_encoder(local), method.global_encoder(features)


def test_dim_rejects_an_encoder_without_feature_maps_and_a_local_stage_that_is_the_last():
    info = RunInfo(8, 4, 0, 1, 1, 1, 16)
    with pytest.raises(ValueError, match="feature_maps"):
        DeepInfoMax(torch.nn.Linear(4, 8), {"head": {"mi_units": 8, "local_stage": 1}, "loss": {}}, info)
    for stage in (3, -1, 4, -5):
        with pytest.raises(ValueError, match=f"head.local_stage={stage}: the backbone has 4 stages"):
            DeepInfoMax(resnet18(width=4, in_channels=1), {"head": {"mi_units": 8, "local_stage": stage}, "loss": {}}, info)
