"""ResNet-18/50 (He et al. 2016) with a CIFAR stem or an ImageNet stem and a settable base width.

CIFAR stem: 3x3 conv, stride 1, no max-pool (as in SimCLR's CIFAR experiments).
ImageNet stem: 7x7 conv, stride 2, then 3x3 max-pool stride 2.
``width`` is the number of channels of the first stage (64 is standard); the
representation is the global-average-pooled output of the last stage,
``8 * width * expansion`` wide (512 for ResNet-18, 2048 for ResNet-50 at width 64).
"""

from __future__ import annotations

import re

from torch import Tensor, nn

STANDARD_WIDTH = 64  # torchvision's and timm's ResNets


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes))


class ResNet(nn.Module):
    """A ResNet trunk: input [B, C, H, W] -> representation [B, out_dim]."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        width: int = 64,
        stem: str = "cifar",
        in_channels: int = 3,
        zero_init_residual: bool = True,
    ):
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"unknown ResNet stem '{stem}'; use 'cifar' (3x3, no max-pool) or 'imagenet' (7x7 + max-pool)")
        if width < 1:
            raise ValueError(f"backbone.width must be a positive number of channels, got {width}")
        if stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, 2, 1),
            )
        stages = []
        in_planes = width
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            stage = []
            for b in range(blocks):
                stage.append(block(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = in_planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            for m in self.modules():
                last_bn = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
                if last_bn is not None:
                    nn.init.zeros_(last_bn.weight)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's feature map [B, out_dim, h, w]."""
        return self.layers(self.stem(x))

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """Every stage's output map, first to last (Deep InfoMax takes its local features from one)."""
        maps = []
        x = self.stem(x)
        for stage in self.layers:
            x = stage(x)
            maps.append(x)
        return maps

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.forward_features(x)).flatten(1)


def resnet18(width: int = 64, stem: str = "cifar", in_channels: int = 3, **kwargs) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), width, stem, in_channels, **kwargs)


def resnet50(width: int = 64, stem: str = "cifar", in_channels: int = 3, **kwargs) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), width, stem, in_channels, **kwargs)


def torchvision_state_dict(model: ResNet) -> dict[str, Tensor]:
    """The trunk's weights under torchvision's names, which timm's ResNets share (classifier ``fc`` left out):

        stem.0 -> conv1,  stem.1 -> bn1,  layers.I.B.(conv|bn)K -> layer{I+1}.B.(conv|bn)K,
        layers.I.B.shortcut.0/1 -> layer{I+1}.B.downsample.0/1

    A model loads it with ``strict=True`` once its ``fc`` is ``nn.Identity()``; a CIFAR stem also needs a 3x3
    stride-1 ``conv1`` and an identity ``maxpool``, and another number of input channels its own ``conv1``.
    """
    renamed = {}
    for name, value in model.state_dict().items():
        name = re.sub(r"^stem\.0\.", "conv1.", name)
        name = re.sub(r"^stem\.1\.", "bn1.", name)
        name = re.sub(r"^layers\.(\d+)\.", lambda m: f"layer{int(m.group(1)) + 1}.", name)
        renamed[name.replace(".shortcut.", ".downsample.")] = value.detach().clone()
    return renamed
