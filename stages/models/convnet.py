"""ConvNet-D: D blocks of [3x3 conv, norm, ReLU, 2x2 avg-pool], then one linear layer.

BatchNorm (not the classic instance-norm DC ConvNet) by default, because recovery matches BN statistics.
"""
import math

from torch import nn


def norm_layer(kind: str, channels: int) -> nn.Module:
    # instance norm with affine parameters, as GroupNorm(C, C) is in the DC/Minimax code
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(channels, channels)


def default_depth(image_size: int) -> int:
    """Depth that leaves a 4x4 map: 3 at 32 px, 4 at 64, 5 at 128."""
    return max(1, int(math.log2(image_size)) - 2)


class ConvNet(nn.Sequential):
    def __init__(self, num_classes: int, image_size: int, width: int = 128, depth: int | None = None,
                 norm: str = "batch"):
        depth = depth or default_depth(image_size)
        if image_size >> depth < 1:
            raise ValueError(f"convnet depth {depth} pools a {image_size}px image below 1 pixel")
        layers, channels = [], 3
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=1), norm_layer(norm, width), nn.ReLU(inplace=True),
                       nn.AvgPool2d(2)]
            channels = width
        side = image_size >> depth
        super().__init__(*layers, nn.Flatten(), nn.Linear(width * side * side, num_classes))
