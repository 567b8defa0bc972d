"""A MobileNetV2 for CIFAR-10: inverted residuals, depthwise 3x3 convolutions, ReLU6.

The layer pattern edge engineers ship (MobileNetV2 of Sandler et al., 2018), sized for
32x32 inputs and a CPU training budget: the stem keeps full resolution (a 32x32 image has
none to spare), the stages halve it three times (32 -> 16 -> 8 -> 4), and a width
multiplier scales every stage. Per-tensor int8 is hard on exactly these layers: a
depthwise conv's output channels each see one filter, so their ranges differ widely.
"""

from __future__ import annotations

from torch import Tensor, nn

# (expansion t, output channels c, repeats n, first stride s) per stage, as in the paper's
# Table 2 with the first two strides set to 1 for 32x32 inputs and fewer repeats.
CIFAR_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 3, 2),
    (6, 96, 2, 1),
    (6, 160, 2, 2),
    (6, 320, 1, 1),
)


def _scaled(channels: int, width: float, divisor: int = 8) -> int:
    """Round ``channels * width`` to a multiple of ``divisor`` (never below 90% of it)."""
    value = max(divisor, int(channels * width + divisor / 2) // divisor * divisor)
    return value + divisor if value < 0.9 * channels * width else value


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """1x1 expand -> depthwise 3x3 -> 1x1 linear projection, with a skip when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn(cin, hidden, 1))
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.use_skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.use_skip else out


class CifarMobileNetV2(nn.Module):
    def __init__(self, width: float = 0.5, num_classes: int = 10, last_channels: int = 640) -> None:
        super().__init__()
        cin = _scaled(32, width)
        layers: list[nn.Module] = [conv_bn(3, cin, 3)]
        for expansion, channels, repeats, stride in CIFAR_SETTING:
            cout = _scaled(channels, width)
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expansion))
                cin = cout
        layers.append(conv_bn(cin, last_channels, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def cifar_mobilenetv2() -> CifarMobileNetV2:
    """The bundled configuration: width 0.5, 640 features before the classifier."""
    return CifarMobileNetV2()
