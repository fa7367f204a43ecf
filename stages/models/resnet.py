"""ResNets for small images: a 3x3 stride-1 stem and no max-pool.

`resnet18_modified` is torchvision's ResNet-18 layout with that stem (SRe2L/RDED/DELT teachers);
`width` scales every stage (64 = the paper network). `resnetap10` is the Minimax/IDC ResNetAP-10:
one block per stage, downsampling by 2x2 average pooling instead of strided convolutions.
"""
from torch import nn
from torch.nn import functional as F

from stages.models.convnet import norm_layer


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str, avgpool_down: bool):
        super().__init__()
        conv_stride = 1 if avgpool_down else stride
        self.conv1 = nn.Conv2d(cin, cout, 3, conv_stride, 1, bias=False)
        self.bn1 = norm_layer(norm, cout)
        self.pool = nn.AvgPool2d(2) if avgpool_down and stride > 1 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(norm, cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            if avgpool_down:
                shortcut = [nn.Conv2d(cin, cout, 1, bias=False), norm_layer(norm, cout), nn.AvgPool2d(stride)]
            else:
                shortcut = [nn.Conv2d(cin, cout, 1, stride, bias=False), norm_layer(norm, cout)]
            self.shortcut = nn.Sequential(*shortcut)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(self.pool(out)))
        return F.relu(out + self.shortcut(x))


class SmallImageResNet(nn.Module):
    def __init__(self, num_classes: int, blocks: list[int], width: int = 64, norm: str = "batch",
                 avgpool_down: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = norm_layer(norm, width)
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout = width << i
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                stages.append(BasicBlock(cin, cout, stride, norm, avgpool_down))
                cin = cout
        self.layers = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.adaptive_avg_pool2d(self.layers(x), 1).flatten(1)
        return self.fc(x)


def resnet18_modified(num_classes: int, image_size: int, width: int = 64, norm: str = "batch", depth=None):
    return SmallImageResNet(num_classes, [2, 2, 2, 2], width, norm)


def resnetap10(num_classes: int, image_size: int, width: int = 64, norm: str = "instance", depth=None):
    return SmallImageResNet(num_classes, [1, 1, 1, 1], width, norm, avgpool_down=True)
