"""A tensor's range by method name, read off one signed :class:`Histogram`: minmax, percentile or mse.

This is how the sim target's activation quantizers calibrate: one histogram per tensor, filled
in two looks (the extremes, then the counts; min/max needs only the first), and read by the
method the user chose. TFLite's percentile is the exact :class:`PercentileObserver` instead.
"""

from __future__ import annotations

from dgh_deploy.calibration.observers.base import Range, check_percentile
from dgh_deploy.calibration.observers.grid import QuantGrid
from dgh_deploy.calibration.observers.histogram import Histogram, TwoLookHistogram, percentile_range
from dgh_deploy.calibration.observers.mse import histogram_mse_range
from dgh_deploy.errors import DGHError

METHODS = ("minmax", "mse", "percentile")


def estimate_range(hist: Histogram, method: str, grid: QuantGrid, percentile: float = 99.99) -> Range:
    """One tensor's calibrated range ``(lo, hi)`` by ``method`` (see :data:`METHODS`)."""
    if method == "minmax":
        return hist.lo, hist.hi
    if method == "percentile":
        return percentile_range(hist, percentile)
    if method == "mse":
        return histogram_mse_range(hist, grid)
    raise DGHError(f"unknown activation range method '{method}'", f"use one of: {', '.join(METHODS)}")


class HistogramObserver(TwoLookHistogram):
    """One tensor's histogram, read by ``method``: one look for minmax, two for percentile and mse."""

    def __init__(self, method: str, grid: QuantGrid, percentile: float = 99.99, bins: int = 2048) -> None:
        if method not in METHODS:
            raise DGHError(f"unknown activation range method '{method}'", f"use one of: {', '.join(METHODS)}")
        if method == "percentile":
            check_percentile(percentile)
        super().__init__(bins)
        self.method, self.grid, self.percentile = method, grid, percentile
        self.passes = 1 if method == "minmax" else 2

    def range(self) -> Range:
        return estimate_range(self.hist, self.method, self.grid, self.percentile)
