"""A small VGG-style convnet for images of 32 px or less (8 px digits, 28 px glyphs).

Four 3x3 conv -> BN -> ReLU blocks of ``width``, ``2 width``, ``4 width``, ``8 width`` channels,
2x2 max-pooling after the second and third blocks while the map is at least 8 px, then average
pooling to a 2x2 grid, flattened: the representation is ``32 * width`` wide.

A ResNet-18 with the CIFAR stem halves an 8 px digit three times down to 1x1, and global
pooling throws away where a stroke is, which is what tells most digits apart. This net keeps
the coarse layout (which quadrant holds what) in the representation; on digits it lifts SimCLR's
kNN by 2-5 points over global pooling (benchmarks/RESULTS.md). It is the default backbone for
small images when no backbone is named (``train.recipe``).
"""

from __future__ import annotations

from torch import Tensor, nn

GRID = 2  # the last feature map is average-pooled to GRID x GRID cells


class ConvNet(nn.Module):
    """Input [B, C, H, W] -> representation [B, out_dim]."""

    def __init__(self, width: int = 64, in_channels: int = 3, input_size: int = 32):
        super().__init__()
        if width < 1:
            raise ValueError(f"backbone.width must be a positive number of channels, got {width}")
        blocks: list[nn.Module] = []
        channels, side = in_channels, input_size
        for i, out_channels in enumerate((width, 2 * width, 4 * width, 8 * width)):
            block = [nn.Conv2d(channels, out_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(out_channels),
                     nn.ReLU(inplace=True)]
            if i in (1, 2) and side >= 8:
                block.append(nn.MaxPool2d(2))
                side //= 2
            blocks.append(nn.Sequential(*block))
            channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(GRID)
        self.out_dim = channels * GRID * GRID
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: Tensor) -> Tensor:
        """The last block's feature map [B, 8 width, h, w]."""
        return self.features(x)

    def feature_maps(self, x: Tensor) -> list[Tensor]:
        """Every block's output map, first to last (Deep InfoMax takes its local features from one)."""
        maps = []
        for block in self.features:
            x = block(x)
            maps.append(x)
        return maps

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.features(x)).flatten(1)


def convnet(width: int = 64, in_channels: int = 3, input_size: int = 32, stem: str | None = None) -> ConvNet:
    """``stem`` is accepted for configs written for a ResNet: only 'cifar' (3x3, stride 1) describes this net."""
    if stem not in (None, "cifar"):
        raise ValueError(f"backbone convnet has a 3x3 stride-1 first layer only; drop backbone.stem={stem} or use resnet18")
    return ConvNet(width, in_channels, input_size)
