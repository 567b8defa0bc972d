"""The entropy observer: TensorRT's activation ranges from a histogram of |x|: entropy (KL), max, percentile.

This follows TensorRT's EntropyCalibration2 as NVIDIA describes it (the MLPerf calibration
write-up, and the open re-implementation in pytorch-quantization's ``HistogramCalibrator``):

* one histogram of ``|x|`` per tensor over the whole calibration set, 2048 bins whose width is
  fixed by the first batch with a non-zero value; when a later batch goes past the range, bins
  of the *same width* are appended, so earlier counts never move (one-shot and incremental
  collection agree bin for bin);
* the threshold is the right edge of the bin ``i`` (``i >= 128``) that minimises
  ``KL(P_i || Q_i)``: ``P_i`` is the first ``i`` bins with everything beyond folded into the
  last one, ``Q_i`` squeezes those ``i`` bins into 128 levels (int8's magnitudes) and spreads
  each level back evenly over its non-empty bins; the first bin is replaced by the second
  (the spike at 0 from ReLU or padding says nothing about the range); among equal minima the
  largest threshold wins.

ONNX Runtime's entropy calibrator is a different algorithm (signed 128-bin histograms, a
symmetric window around zero): it is *not* used here.

Max is the exact running max of ``|x|`` (not the histogram's edge). Percentile is the right
edge of the bin where the cumulative count reaches the percentile. Entropy and percentile
ranges are capped at the max: the last bin's right edge can lie past every value seen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dgh_deploy.calibration.observers.base import Observer, Range, as_numpy, check_percentile
from dgh_deploy.errors import DGHError

NUM_BINS = 2048  # initial bins per tensor, as in pytorch-quantization and TensorRT's calibrator
START_BIN = 128  # the smallest candidate keeps 128 bins: one per int8 magnitude level
# Appending fixed-width bins after a far outlier could make millions of bins; past this many,
# pairs of bins merge (the width doubles), as TensorRT's own power-of-2 bin growth does.
MAX_BINS = 16 * NUM_BINS
AMAX_METHODS = ("entropy", "max", "percentile")  # "minmax" reads as "max"


@dataclass
class EntropyObserver(Observer):
    """A growing histogram of ``|x|`` for one tensor; feed it batch by batch (:meth:`observe`).

    :meth:`compute_amax` reads the range's magnitude by ``method`` (entropy, max or percentile);
    :meth:`range` is the symmetric range of :attr:`method` (entropy unless told otherwise).
    """

    num_bins: int = NUM_BINS
    max_bins: int = MAX_BINS
    counts: np.ndarray | None = None  # int64 counts; bin k covers [k * width, (k + 1) * width)
    width: float = 0.0
    amax: float = 0.0  # exact running max of |x|
    pending_zeros: int = 0  # zeros seen before the first non-zero value fixed the bin width
    method: str = "entropy"  # how :meth:`range` reads the histogram
    percentile: float = 99.99  # with method "percentile"
    name: str = "tensor"  # in the message about NaN or Inf

    def observe(self, x: Any) -> None:
        self.collect(as_numpy(x), self.name)

    def range(self) -> Range:
        amax = self.compute_amax(self.method, self.percentile)
        return -amax, amax

    @property
    def edges(self) -> np.ndarray:
        n = 0 if self.counts is None else len(self.counts)
        return np.arange(n + 1, dtype=np.float64) * self.width

    def collect(self, x: np.ndarray, name: str = "tensor") -> None:
        a = np.abs(np.asarray(x, dtype=np.float32)).ravel()
        if a.size == 0:
            return
        m = float(a.max())
        if not math.isfinite(m):
            raise DGHError(
                f"activation '{name}' holds NaN or Inf on the calibration images",
                "check the model in float on these images, or regenerate the calibration set",
            )
        self.amax = max(self.amax, m)
        if self.counts is None:
            if m == 0.0:
                self.pending_zeros += a.size
                return
            self.width = m / self.num_bins
            self.counts = np.zeros(self.num_bins, dtype=np.int64)
            self.counts[0] += self.pending_zeros
            self.pending_zeros = 0
        needed = math.ceil(m / self.width)
        if needed > len(self.counts):
            self._grow(needed)
        self.counts += bin_counts(a, self.width, len(self.counts))

    def _grow(self, needed: int) -> None:
        assert self.counts is not None
        counts = self.counts
        width = self.width
        while needed > self.max_bins:
            if len(counts) % 2:
                counts = np.append(counts, 0)
            counts = counts.reshape(-1, 2).sum(axis=1)
            width *= 2.0
            needed = math.ceil(needed / 2)
        self.counts = np.concatenate([counts, np.zeros(max(needed - len(counts), 0), dtype=np.int64)])
        self.width = width

    def compute_amax(self, method: str = "entropy", percentile: float = 99.99) -> float:
        """The range (amax, > 0 unless the tensor was all zeros) by ``method`` (see :data:`AMAX_METHODS`)."""
        method = "max" if method == "minmax" else method
        if method not in AMAX_METHODS:
            raise ValueError(f"unknown amax method '{method}' (one of {', '.join(AMAX_METHODS)})")
        if self.counts is None or self.amax == 0.0:
            return 0.0
        if method == "max":
            return self.amax
        if method == "percentile":
            return min(percentile_amax(self.counts, self.width, percentile), self.amax)
        return min(entropy_amax(self.counts, self.width), self.amax)


def bin_counts(a: np.ndarray, width: float, n: int) -> np.ndarray:
    """Counts of ``a`` (>= 0) in bins ``[k w, (k+1) w)``, k < n, with values past the end in the last bin.

    A float32 pass finds the bin; the few values within rounding distance of an edge are placed
    again in float64 against the edges ``k * w`` that :attr:`EntropyObserver.edges` gives, so the
    counts equal ``np.histogram`` over those edges (a 5x saving over a float64 pass over all).
    """
    q = np.asarray(a, dtype=np.float32) * np.float32(1.0 / width)
    idx = q.astype(np.int64)
    frac = q - idx
    near = np.flatnonzero((frac < 0.01) | (frac > 0.99))
    if near.size:
        exact = a[near].astype(np.float64)
        k = np.floor(exact / width).astype(np.int64)
        k -= exact < k * width
        k += exact >= (k + 1) * width
        idx[near] = k
    return np.bincount(np.clip(idx, 0, n - 1), minlength=n)


def percentile_amax(counts: np.ndarray, width: float, percentile: float) -> float:
    """Right edge of the bin where the cumulative share of values reaches ``percentile`` %."""
    check_percentile(percentile)
    cdf = np.cumsum(counts, dtype=np.float64)
    idx = int(np.searchsorted(cdf, cdf[-1] * percentile / 100.0))
    return float(min(idx, len(counts) - 1) + 1) * width


def kl_divergences(counts: np.ndarray, num_levels: int = 1 << 7, start_bin: int = START_BIN
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``KL(P_i || Q_i)`` for every candidate bin count ``i`` in ``start_bin..len(counts)``.

    Returns (candidates, divergences); ``inf`` where ``Q_i`` misses mass ``P_i`` has. All
    candidates at once from prefix sums: with ``r`` the reference counts, ``c`` the expanded
    quantized counts, ``T`` the total and ``K`` the kept count,
    ``KL = (sum r log r - sum r log c) / T + log(K / T)``, and inside one quantization level
    ``c`` is constant (level sum / non-empty bins), so ``sum r log c`` is per level.
    """
    bins = np.asarray(counts, dtype=np.float64).copy()
    n = len(bins)
    if n < start_bin:
        return np.array([n]), np.array([0.0])
    bins[0] = bins[1]
    total = bins.sum()
    cand = np.arange(start_bin, n + 1)
    prefix = np.concatenate([[0.0], np.cumsum(bins)])
    nonzero = np.concatenate([[0], np.cumsum(bins > 0)])
    xlogx = np.concatenate([[0.0], np.cumsum(_xlogx(bins))])

    outliers = total - prefix[cand]
    kept = total - outliers
    last = bins[cand - 1]
    sum_rlogr = xlogx[cand - 1] + _xlogx(last + outliers)

    # Level k of candidate i covers bins [ceil(k i / L), ceil((k + 1) i / L)): the integer form of
    # "j * L // i == k", so every level holds at least one bin because i >= L.
    k = np.arange(num_levels + 1)
    starts = (k[None, :] * cand[:, None] + num_levels - 1) // num_levels
    level_sum = prefix[starts[:, 1:]] - prefix[starts[:, :-1]]
    level_nz = nonzero[starts[:, 1:]] - nonzero[starts[:, :-1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        per_level = np.where(level_sum > 0, level_sum * np.log(level_sum / np.maximum(level_nz, 1)), 0.0)
        sum_rlogc = per_level.sum(axis=1)
        # The outliers sit in the last reference bin; the candidate there is its level's mean.
        last_c = level_sum[:, -1] / np.maximum(level_nz[:, -1], 1)
        sum_rlogc += np.where(outliers > 0, outliers * np.log(np.where(last_c > 0, last_c, 1.0)), 0.0)
        kl = (sum_rlogr - sum_rlogc) / total + np.log(kept / total)
    missing = ((last == 0) & (outliers > 0)) | (kept <= 0)
    kl = np.where(missing | ~np.isfinite(kl), np.inf, kl)
    return cand, kl


def entropy_amax(counts: np.ndarray, width: float, num_levels: int = 1 << 7, start_bin: int = START_BIN) -> float:
    """TensorRT EntropyCalibration2 threshold of a histogram of ``|x|`` with bins of ``width``."""
    cand, kl = kl_divergences(counts, num_levels, start_bin)
    if not np.isfinite(kl).any():
        return float(len(counts)) * width
    best = len(kl) - 1 - int(np.argmin(kl[::-1]))  # the last minimum: the widest of equal ranges
    return float(cand[best]) * width


def _xlogx(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(v > 0, v * np.log(np.where(v > 0, v, 1.0)), 0.0)
