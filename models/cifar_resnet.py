"""CIFAR ResNets of He et al. (2016), with the parameter-free "option A" shortcut.

Parameter names match the widely used checkpoints (``conv1``, ``bn1``,
``layer{1,2,3}.{i}.conv1/bn1/conv2/bn2``, ``linear``), so the pretrained
``resnet20-12fca82f.th`` / ``resnet56-4bfd9763.th`` load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class OptionAShortcut(nn.Module):
    """Subsample by 2 in space and zero-pad the channels: the shortcut has no parameters.

    Two mathematically identical forms. ``strided_slice`` is the textbook one
    (``x[:, :, ::2, ::2]``). onnx2tf 1.29.24 mis-converts that strided Slice in
    mid-graph, so ``export_form()`` switches to ``conv``: a fixed 1x1 stride-2
    convolution whose weight is an identity embedding of the input channels into
    the output channels, which converts exactly. Both forms give bit-identical
    results in float32 because each output is one input element times 1.0.
    """

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.use_conv = False
        pad = (out_planes - in_planes) // 2
        weight = torch.zeros(out_planes, in_planes, 1, 1)
        for c in range(in_planes):
            weight[pad + c, c, 0, 0] = 1.0
        # Not persistent: the checkpoints know nothing of it, and it is derived from shapes.
        self.register_buffer("embed", weight, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_conv:
            return F.conv2d(x, self.embed, stride=2)
        pad = (self.out_planes - self.in_planes) // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = OptionAShortcut(in_planes, planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, n, 1)
        self.layer2 = self._stage(32, n, 2)
        self.layer3 = self._stage(64, n, 2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _stage(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def export_form(model: nn.Module, use_conv: bool = True) -> nn.Module:
    """Switch every option-A shortcut to its exactly-converting 1x1-conv form (in place)."""
    for m in model.modules():
        if isinstance(m, OptionAShortcut):
            m.use_conv = use_conv
    return model


def cifar_resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(20, num_classes)


def cifar_resnet56(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(56, num_classes)
