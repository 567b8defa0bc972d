"""A signed histogram of a tensor over a calibration set, streamed: first the range, then the counts.

It serves the readings that need the distribution (a percentile within a bin, the MSE search);
:func:`percentile_range` is the percentile reading.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from dgh_deploy.calibration.observers.base import Observer, Range, as_torch, check_percentile


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
        lo, hi = self.edges()
        c = torch.histc(x.detach().float().flatten(), self.bins, lo, hi).double()
        self.counts = c if self.counts is None else self.counts + c

    def edges(self) -> tuple[float, float]:
        """The first bin's left edge and the last's right one (widened when every value is equal)."""
        if not math.isfinite(self.lo):
            raise ValueError("observe_range before observe_counts")
        return (self.lo, self.hi) if self.hi > self.lo else (self.lo - 1e-6, self.hi + 1e-6)

    def centers(self) -> torch.Tensor:
        lo, hi = self.edges()
        width = (hi - lo) / self.bins
        return lo + width * (torch.arange(self.bins, dtype=torch.float64) + 0.5)

    def quantile(self, q: float) -> float:
        """Value below which a fraction ``q`` of the observations lie (linear within a bin)."""
        assert self.counts is not None
        lo, hi = self.edges()
        cdf = torch.cumsum(self.counts, 0) / self.counts.sum()
        i = int(torch.searchsorted(cdf, torch.tensor([q], dtype=torch.float64)).clamp(max=self.bins - 1))
        prev = float(cdf[i - 1]) if i > 0 else 0.0
        frac = (q - prev) / max(float(cdf[i]) - prev, 1e-12)
        return lo + (hi - lo) * (i + min(max(frac, 0.0), 1.0)) / self.bins


def percentile_range(hist: Histogram, percentile: float) -> Range:
    """Both tails clipped at ``percentile`` %, read within a bin; the low end stays the minimum
    when nothing is negative (a ReLU output keeps its zero)."""
    check_percentile(percentile)
    lo = hist.quantile(1.0 - percentile / 100.0) if hist.lo < 0 else hist.lo
    return min(lo, 0.0) if hist.lo < 0 else lo, hist.quantile(percentile / 100.0)


class TwoLookHistogram(Observer):
    """An observer over one :class:`Histogram`, filled in two looks: the extremes, then the counts
    between them. Subclasses read the range off the histogram."""

    passes = 2

    def __init__(self, bins: int = 2048) -> None:
        self.hist = Histogram(bins)
        self.step = 0

    def begin_pass(self, index: int) -> None:
        self.step = index

    def start_counts(self, lo: float, hi: float) -> None:
        """Skip the first look: the extremes ``lo``, ``hi`` are known (another observer found them)."""
        self.hist.lo, self.hist.hi = lo, hi
        self.step = 1

    def observe(self, x: Any) -> None:
        t = as_torch(x)
        if self.step == 0:
            self.hist.observe_range(t)
        else:
            self.hist.observe_counts(t)
