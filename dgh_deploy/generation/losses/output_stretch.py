"""DGH's distribution-stretching output loss (MCT's NEGATIVE_MIN_MAX_DIFF)."""

from __future__ import annotations

import torch


def output_stretch_sum(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Sum over images of ``-(max - min)`` of each output tensor, flattened per image.

    A sum, not a mean, so that chunks add up; divide by the image count for DGH's loss. The
    last layers have no BN to match, and widening their output range keeps the generated
    images' output distribution from collapsing.
    """
    dtype = torch.promote_types(tensors[0].dtype, torch.float32)
    total = torch.zeros((), dtype=dtype, device=tensors[0].device)
    for t in tensors:
        flat = t.to(dtype).flatten(1)
        total = total - (flat.amax(dim=1) - flat.amin(dim=1)).sum()
    return total
