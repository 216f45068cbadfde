"""ResNet stems and widths, the backbone registry, and any nn.Module as the encoder."""

import pytest
import torch
from torch import nn

from selfsup.nn.backbones import build_backbone, output_dim
from selfsup.nn.convnet import convnet
from selfsup.nn.resnet import resnet18, resnet50
from selfsup.train.trainer import fit
from tests.helpers import DIGITS_SMALL, digits


@pytest.mark.parametrize("factory, expansion, blocks", [(resnet18, 1, 8), (resnet50, 4, 16)])
def test_resnet_widths_and_stems(factory, expansion, blocks):
    cifar = factory(width=8, stem="cifar")
    assert cifar.out_dim == 8 * 8 * expansion
    assert cifar.forward_features(torch.zeros(2, 3, 32, 32)).shape[-2:] == (4, 4)  # 3x3 stem, no max-pool
    imagenet = factory(width=8, stem="imagenet")
    assert imagenet.forward_features(torch.zeros(2, 3, 224, 224)).shape[-2:] == (7, 7)  # /2 conv, /2 pool
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in cifar.modules()) >= blocks
    assert cifar(torch.zeros(2, 3, 32, 32)).shape == (2, cifar.out_dim)


def test_standard_resnet18_has_the_usual_size():
    params = sum(p.numel() for p in resnet18(width=64, stem="imagenet").parameters())
    assert params == 11_176_512  # torchvision's resnet18 without its 512x1000 classifier


def test_registry_errors_and_grayscale_input():
    assert build_backbone({"name": "resnet18", "width": 4, "stem": "cifar"}, 1, 8)(torch.zeros(2, 1, 8, 8)).shape == (2, 32)
    with pytest.raises(ValueError, match="unknown backbone 'resnet19'"):
        build_backbone({"name": "resnet19"}, 3, 32)
    with pytest.raises(ValueError, match="stem"):
        resnet18(stem="vgg")


def test_any_module_can_be_the_encoder(tmp_path):
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 24))
    assert output_dim(encoder, torch.zeros(2, 1, 8, 8)) == 24
    summary = fit("simclr", "digits", out_dir=tmp_path / "mlp", encoder=encoder, datasets=digits(),
                  assignments=DIGITS_SMALL + ["train.epochs=2"])
    assert 0.0 < summary["knn_top1"] <= 1.0
    trained = torch.load(tmp_path / "mlp" / "checkpoints" / "last.pt", weights_only=True)["method"]
    assert trained["encoder.1.weight"].shape == (48, 64)


@pytest.mark.parametrize("factory, sides", [
    (lambda: resnet18(width=4, stem="cifar"), [32, 16, 8, 4]),
    (lambda: convnet(width=4, input_size=32), [32, 16, 8, 8]),  # max-pool after blocks 2 and 3
    (lambda: convnet(width=4, input_size=8), [8, 4, 4, 4]),  # no pooling below 8 px
])
def test_feature_maps_are_the_stages_and_end_in_the_representation(factory, sides):
    """Deep InfoMax's local features come from one of these maps; the last is what the encoder pools."""
    torch.manual_seed(0)
    net = factory().eval()
    x = torch.randn(2, 3, sides[0], sides[0])
    maps = net.feature_maps(x)
    assert [m.shape[-1] for m in maps] == sides and [m.shape[1] for m in maps] == [4, 8, 16, 32]
    assert torch.equal(maps[-1], net.forward_features(x))
    assert torch.allclose(net.pool(maps[-1]).flatten(1), net(x))
