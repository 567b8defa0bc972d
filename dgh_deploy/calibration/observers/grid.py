"""Quantization grids: how a real range ``[lo, hi]`` becomes integers (bits, zero point, power-of-two)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class QuantGrid:
    """Integer grid of one tensor (or of each channel: every argument broadcasts).

    Symmetric grids have zero point 0: unsigned ``[0, 2^b - 1]`` when the range has no
    negative values (ReLU outputs), signed otherwise, ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` when
    ``narrow`` (TFLite's weights) or ``[-2^(b-1), 2^(b-1) - 1]``. Asymmetric grids are
    ``[0, 2^b - 1]`` with an integer zero point, so that 0.0 is exact. Power-of-two scales are
    rounded up, so the range is still covered (as Sony IMX500 requires).
    """

    bits: int
    symmetric: bool
    power_of_two: bool = False
    narrow: bool = False

    def params(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(scale, zero_point, qmin, qmax), each shaped like ``lo``."""
        lo = torch.clamp(torch.as_tensor(lo, dtype=torch.float32), max=0.0)
        hi = torch.clamp(torch.as_tensor(hi, dtype=torch.float32), min=0.0)
        levels = 2**self.bits - 1
        if self.symmetric:
            signed = lo < 0
            half = 2 ** (self.bits - 1) - 1
            qmax = torch.where(signed, torch.full_like(lo, half), torch.full_like(lo, levels))
            qmin = torch.where(signed, torch.full_like(lo, -half if self.narrow else -half - 1), torch.zeros_like(lo))
            scale = torch.maximum(-lo, hi) / qmax
            zero = torch.zeros_like(lo)
        else:
            qmin, qmax = torch.zeros_like(lo), torch.full_like(lo, levels)
            scale = (hi - lo) / levels
        scale = torch.clamp(scale, min=1e-12)
        if self.power_of_two:
            scale = torch.exp2(torch.ceil(torch.log2(scale)))
        if not self.symmetric:
            zero = torch.clamp(torch.round(-lo / scale), 0, levels)
        return scale, zero, qmin, qmax

    @staticmethod
    def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: torch.Tensor,
                   qmax: torch.Tensor) -> torch.Tensor:
        """Round to the grid and back: the value an integer pipeline carries, in float."""
        q = torch.clamp(torch.round(x / scale) + zero, qmin, qmax)
        return (q - zero) * scale
