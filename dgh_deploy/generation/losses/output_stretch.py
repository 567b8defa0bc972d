"""DGH's distribution-stretching output loss (MCT's NEGATIVE_MIN_MAX_DIFF)."""

from __future__ import annotations

from typing import Any

import torch


def output_stretch_sum(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Sum over images of ``-(max - min)`` of each output tensor, flattened per image.

    A sum, not a mean, so that chunks add up; divide by the image count for DGH's loss. The
    last layers have no BN to match, and widening their output range keeps the generated
    images' output distribution from collapsing.
    """
    total = torch.zeros((), dtype=torch.promote_types(tensors[0].dtype, torch.float32), device=tensors[0].device)
    for t in tensors:
        total = total + _NegativeRangeSum.apply(t)
    return total


class _NegativeRangeSum(torch.autograd.Function):
    """``-(max - min).sum()`` over each image's elements, in float32 or wider.

    The gradient is ``-g`` at each image's maximum and ``+g`` at its minimum, written from the
    positions found in the forward: amax/amin's own backward compares the whole tensor with its
    extremes twice and scales it, three passes over head maps as large as the input (YOLOv5n at
    320: 12% of a generation step, against 2% here). With ties the whole gradient goes to one of
    the tied elements instead of being shared; on float logits that does not happen in practice.
    """

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(t.shape[0], -1)  # a copy only where t is a strided slice (a head's channel group)
        high, at_high = flat.max(dim=1)
        low, at_low = flat.min(dim=1)
        ctx.save_for_backward(at_high, at_low)
        ctx.shape, ctx.dtype = t.shape, t.dtype
        wide = torch.promote_types(t.dtype, torch.float32)
        return -(high.to(wide) - low.to(wide)).sum()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        at_high, at_low = ctx.saved_tensors
        n = ctx.shape[0]
        out = torch.zeros((n, ctx.shape[1:].numel()), dtype=ctx.dtype, device=grad.device)
        rows = torch.arange(n, device=grad.device)
        g = grad.to(ctx.dtype).expand(n)
        out.index_put_((rows, at_high), -g, accumulate=True)
        out.index_put_((rows, at_low), g, accumulate=True)  # accumulate: max and min are one element in a constant map
        return out.view(ctx.shape)
