"""DGH's image pipeline: what the optimiser sees each step, and the final images.

Images are stored ``extra`` pixels larger than the model input. Each step: Gaussian smoothing
(a natural-image prior), then a random crop and a random horizontal flip per image (the
training augmentations), then clipping to the valid pixel range. Smoothing with a symmetric
kernel commutes with flips and (away from the zero-padded border) with crops, so this order
draws the same distribution as MCT's flip -> smooth -> crop, and lets the flip and the crop
be one gather. Final images: smoothing, center crop, clipping.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    axis = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * sigma**2))
    return (k / k.sum()).float()


class _ClampStraightThrough(torch.autograd.Function):
    """``clamp(x, lo, hi)`` forward, identity backward: one pass each way, where ``x + (clamp(x) -
    x).detach()`` took three forward and kept a graph node for each."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, lo, hi)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad, None, None


class ImagePipeline:
    def __init__(
        self, out_hw: tuple[int, int], extra: int, pixel_range: tuple[np.ndarray, np.ndarray], *,
        smoothing_size: int = 3, smoothing_sigma: float = 1.25, enabled: bool = True, clip: bool = True,
        channels_last: bool = False, device: str | torch.device = "cpu",
    ) -> None:
        self.out_hw = out_hw
        self.enabled = enabled
        self.extra = (extra, extra) if enabled else (0, 0)
        self.stored_hw = (out_hw[0] + self.extra[0], out_hw[1] + self.extra[1])
        self.clip = clip
        self.channels_last = channels_last
        self.lo = torch.as_tensor(pixel_range[0], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.hi = torch.as_tensor(pixel_range[1], dtype=torch.float32, device=device).view(1, 3, 1, 1)
        k = gaussian_kernel(smoothing_size, smoothing_sigma)
        self.kernel = k.expand(3, 1, *k.shape).contiguous().to(device)
        self.pad = smoothing_size // 2

    def smooth(self, x: torch.Tensor) -> torch.Tensor:
        # A 3-group convolution of NCHW images runs about 8x slower on CPU (oneDNN) than of
        # channels-last ones, forward and backward: at 320 pixels it was over a third of a step.
        return F.conv2d(self._layout(x), self.kernel.to(x.dtype), padding=self.pad, groups=3)

    def train_view(self, x: torch.Tensor, flip: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
        """The augmented model input for one step (differentiable with respect to ``x``)."""
        if not self.enabled:
            return self._layout(self._clip_ste(x))
        h, w = self.out_hw
        dev = x.device
        flip, dy, dx = flip.to(dev), dy.to(dev), dx.to(dev)
        ar_h, ar_w = torch.arange(h, device=dev), torch.arange(w, device=dev)
        rows = dy[:, None] + ar_h
        cols = dx[:, None] + torch.where(flip[:, None], w - 1 - ar_w, ar_w)
        s = self.smooth(x)
        n, c, _, stored_w = s.shape
        # One gather over the flattened pixels: its backward is a scatter-add, 3x (YOLO at 320)
        # to 20x (CIFAR) faster on CPU than advanced indexing's index_put. A crop reads no pixel
        # twice, so the gradient is the same to the bit.
        index = (rows[:, :, None] * stored_w + cols[:, None, :]).flatten(1)
        if self.channels_last:  # gather the pixels of N x HW x C: no layout copy either way
            crop = s.permute(0, 2, 3, 1).flatten(1, 2).gather(1, index[:, :, None].expand(n, -1, c))
            return self._clip_ste(crop.view(n, h, w, c).permute(0, 3, 1, 2))
        crop = s.flatten(2).gather(2, index[:, None, :].expand(n, c, -1)).view(n, c, h, w)
        return self._clip_ste(crop)

    @torch.no_grad()
    def final_view(self, x: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            h, w = self.out_hw
            top, left = round(self.extra[0] / 2), round(self.extra[1] / 2)
            x = self.smooth(x)[:, :, top : top + h, left : left + w]
        return torch.clamp(x, self.lo.to(x.dtype), self.hi.to(x.dtype)) if self.clip else x

    def _clip_ste(self, x: torch.Tensor) -> torch.Tensor:
        # As MCT: the forward pass sees clipped pixels, the gradient passes straight through.
        if not self.clip:
            return x
        return _ClampStraightThrough.apply(x, self.lo.to(x.dtype), self.hi.to(x.dtype))

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
