"""Min/max observers: the extremes of a tensor (per tensor) or of each of its channels."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from dgh_deploy.calibration.observers.base import Observer, Range, as_numpy


class MinMaxObserver(Observer):
    """The smallest and largest value seen: one extreme activation of one image sets the range."""

    def __init__(self) -> None:
        self.lo, self.hi = math.inf, -math.inf

    def observe(self, x: Any) -> None:
        values = as_numpy(x)
        self.lo = min(self.lo, float(values.min()))
        self.hi = max(self.hi, float(values.max()))

    def range(self) -> Range:
        if not math.isfinite(self.lo):
            raise ValueError("range() before any observe()")
        return self.lo, self.hi


class PerChannelMinMaxObserver(Observer):
    """Each channel's extremes along ``axis`` (weights: the output channels, axis 0)."""

    def __init__(self, axis: int = 0) -> None:
        self.axis = axis
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None

    def observe(self, x: Any) -> None:
        values = np.moveaxis(as_numpy(x), self.axis, 0)
        rows = values.reshape(values.shape[0], -1)
        lo, hi = rows.min(axis=1), rows.max(axis=1)
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)

    def ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi), one entry per channel."""
        if self.lo is None or self.hi is None:
            raise ValueError("ranges() before any observe()")
        return self.lo, self.hi

    def range(self) -> Range:
        """The whole tensor's extremes (every channel together)."""
        lo, hi = self.ranges()
        return float(lo.min()), float(hi.max())
