"""A detector of your own through dgh-deploy's detector protocol: the whole contract in one file.

    dgh-deploy --target tflite-int8 --model examples/tiny_detector.py:build --weights my.pt \\
        --val-data coco128.yaml

The module states its classes, strides and input size, returns its raw head maps (what DGH
stretches and what the int8 file outputs) and decodes them into boxes and class scores (run in
float on the host, after the int8 file). ``build()`` here has random weights: a real detector
loads its trained ones with ``--weights`` (a state_dict) or in the factory.
"""

from __future__ import annotations

import torch
from torch import nn


def conv(c_in: int, c_out: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    k = 3 if groups > 1 or stride > 1 else 1
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class TinyDetector(nn.Module):
    """Depthwise backbone, two levels (strides 16 and 32), an anchor-free head per level."""

    # -- the protocol's attributes ------------------------------------------------------------
    num_classes = 80
    strides = (16, 32)
    input_size = 160  # int, or (height, width)
    # Optional: the preprocessing the model was trained with (these are the defaults but resize).
    channel_order = "RGB"  # or "BGR" for OpenCV-read training images
    resize = "letterbox"  # or "stretch" (cv2.resize to the input size)
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # on 0..1 pixels

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv(3, 16, 2), nn.MaxPool2d(3, 2, 1), conv(16, 32))  # stride 4
        self.stage16 = nn.Sequential(conv(32, 32, 2, groups=32), conv(32, 64), conv(64, 64, 2, groups=64),
                                     conv(64, 96))
        self.stage32 = nn.Sequential(conv(96, 96, 2, groups=96), conv(96, 128))
        self.box = nn.ModuleList(nn.Conv2d(c, 4, 1) for c in (96, 128))
        self.cls = nn.ModuleList(nn.Conv2d(c, self.num_classes, 1) for c in (96, 128))

    def head_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Raw maps, before any sigmoid or decoding: box and class logits per level."""
        p16 = self.stage16(self.stem(x))
        p32 = self.stage32(p16)
        return [self.box[0](p16), self.cls[0](p16), self.box[1](p32), self.cls[1](p32)]

    def decode(self, maps: list[torch.Tensor], input_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> boxes N x 4 x A (cx, cy, w, h over the input width/height), class probabilities N x nc x A."""
        h, w = input_hw
        norm = torch.tensor([w, h], dtype=maps[0].dtype).view(1, 2, 1)
        boxes, scores = [], []
        for box, cls, stride in zip(maps[0::2], maps[1::2], self.strides, strict=True):
            gh, gw = box.shape[-2:]
            gy, gx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
            grid = torch.stack((gx, gy)).flatten(1).to(box.dtype)[None]  # 1 x 2 x gh*gw
            t = box.flatten(2)
            xy = (t[:, :2].sigmoid() * 2 - 0.5 + grid) * stride
            wh = t[:, 2:].clamp(max=6).exp() * stride
            boxes.append(torch.cat((xy / norm, wh / norm), 1))
            scores.append(cls.flatten(2).sigmoid())
        return torch.cat(boxes, 2), torch.cat(scores, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Not used by dgh-deploy (it calls head_maps and decode); here for your own code."""
        return self.decode(self.head_maps(x), (x.shape[-2], x.shape[-1]))


def build() -> TinyDetector:
    torch.manual_seed(0)  # random weights, the same in every process
    return TinyDetector()
