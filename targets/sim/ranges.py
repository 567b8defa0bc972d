"""Quantization grids and activation-range estimators (minmax, mse, percentile).

A :class:`QuantGrid` says how a real range ``[lo, hi]`` becomes integers: bits, symmetric or
asymmetric (zero point), optional power-of-two scales (as Sony IMX500 requires). Range
estimators work on a streaming :class:`Histogram` of a tensor seen over the calibration
set; :func:`mse_range` also serves per-channel weights, on the values themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dgh_deploy.errors import DGHError

METHODS = ("minmax", "mse", "percentile")


@dataclass(frozen=True)
class QuantGrid:
    """Integer grid of one tensor (or of each channel: every argument broadcasts).

    Symmetric grids have zero point 0: unsigned ``[0, 2^b - 1]`` when the range has no
    negative values (ReLU outputs), signed otherwise, ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` when
    ``narrow`` (TFLite's weights) or ``[-2^(b-1), 2^(b-1) - 1]``. Asymmetric grids are
    ``[0, 2^b - 1]`` with an integer zero point, so that 0.0 is exact. Power-of-two scales are
    rounded up, so the range is still covered.
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


class Histogram:
    """A tensor's value distribution over a calibration set: first the range, then counts."""

    def __init__(self, bins: int = 2048) -> None:
        self.bins = bins
        self.lo, self.hi = math.inf, -math.inf
        self.counts: torch.Tensor | None = None

    def observe_range(self, x: torch.Tensor) -> None:
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))

    def observe_counts(self, x: torch.Tensor) -> None:
        lo, hi = self._edges()
        c = torch.histc(x.detach().float().flatten(), self.bins, lo, hi).double()
        self.counts = c if self.counts is None else self.counts + c

    def _edges(self) -> tuple[float, float]:
        if not math.isfinite(self.lo):
            raise ValueError("observe_range before observe_counts")
        return (self.lo, self.hi) if self.hi > self.lo else (self.lo - 1e-6, self.hi + 1e-6)

    def centers(self) -> torch.Tensor:
        lo, hi = self._edges()
        width = (hi - lo) / self.bins
        return lo + width * (torch.arange(self.bins, dtype=torch.float64) + 0.5)

    def quantile(self, q: float) -> float:
        """Value below which a fraction ``q`` of the observations lie (linear within a bin)."""
        assert self.counts is not None
        lo, hi = self._edges()
        cdf = torch.cumsum(self.counts, 0) / self.counts.sum()
        i = int(torch.searchsorted(cdf, torch.tensor([q], dtype=torch.float64)).clamp(max=self.bins - 1))
        prev = float(cdf[i - 1]) if i > 0 else 0.0
        frac = (q - prev) / max(float(cdf[i]) - prev, 1e-12)
        return lo + (hi - lo) * (i + min(max(frac, 0.0), 1.0)) / self.bins


def mse_range(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, grid: QuantGrid,
              counts: torch.Tensor | None = None, steps: int = 64, two_sided: bool = False,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``values`` (C x K), the clipped range with the least squared rounding error.

    Candidates shrink ``[lo, hi]`` by fractions ``1/steps .. 1``: both ends by one factor,
    or (``two_sided``) each end by its own factor, which suits activations whose two tails
    differ. ``counts`` weighs the values (a histogram's bin counts).
    """
    values = values.double()
    w = counts.double() if counts is not None else torch.ones_like(values)
    frac = torch.linspace(1.0 / steps, 1.0, steps, dtype=torch.float64)
    lo, hi = lo.double().reshape(-1, 1), hi.double().reshape(-1, 1)
    if two_sided:
        cand_lo = (lo[:, :, None] * frac[None, :, None]).expand(-1, steps, steps).reshape(len(lo), -1)
        cand_hi = (hi[:, None, :] * frac[None, None, :]).expand(-1, steps, steps).reshape(len(hi), -1)
    else:
        cand_lo, cand_hi = lo * frac, hi * frac
    best_err = torch.full((len(lo),), math.inf, dtype=torch.float64)
    best_lo, best_hi = lo[:, 0].clone(), hi[:, 0].clone()
    block = max(1, 2**22 // values.numel())  # candidates evaluated together, memory-bounded
    for j in range(0, cand_lo.shape[1], block):
        c_lo, c_hi = cand_lo[:, j : j + block], cand_hi[:, j : j + block]
        scale, zero, qmin, qmax = (t.double()[..., None] for t in grid.params(c_lo, c_hi))
        v = values[:, None, :]
        err = (w[:, None, :] * (v - grid.fake_quant(v, scale, zero, qmin, qmax)) ** 2).sum(-1)  # C x block
        e, k = err.min(dim=1)
        better = e < best_err
        best_err = torch.where(better, e, best_err)
        best_lo = torch.where(better, c_lo.gather(1, k[:, None])[:, 0], best_lo)
        best_hi = torch.where(better, c_hi.gather(1, k[:, None])[:, 0], best_hi)
    return best_lo.float(), best_hi.float()


def check_percentile(percentile: float) -> None:
    """Refuse a percentile no range can be read at (the share of values kept, in (50, 100])."""
    if not 50.0 < percentile <= 100.0:
        raise DGHError(f"percentile {percentile} is out of range", "pass a percentile in (50, 100], e.g. 99.99")


def estimate_range(hist: Histogram, method: str, grid: QuantGrid, percentile: float = 99.99) -> tuple[float, float]:
    """One tensor's calibrated range ``(lo, hi)`` by ``method`` (see :data:`METHODS`)."""
    if method == "minmax":
        return hist.lo, hist.hi
    if method == "percentile":
        check_percentile(percentile)
        lo = hist.quantile(1.0 - percentile / 100.0) if hist.lo < 0 else hist.lo
        return min(lo, 0.0) if hist.lo < 0 else lo, hist.quantile(percentile / 100.0)
    if method == "mse":
        lo, hi = mse_range(hist.centers()[None], torch.tensor([min(hist.lo, 0.0)]), torch.tensor([max(hist.hi, 0.0)]),
                           grid, counts=hist.counts[None], two_sided=hist.lo < 0 < hist.hi)
        return float(lo[0]), float(hi[0])
    raise DGHError(f"unknown activation range method '{method}'", f"use one of: {', '.join(METHODS)}")
