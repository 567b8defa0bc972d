"""The MSE observer: the clipped range with the least squared rounding error on a quantization grid.

:func:`mse_range` searches candidates for many rows at once (per-channel weights, on the values
themselves); :class:`MseObserver` runs it over a tensor's :class:`Histogram` (bin centres weighed
by counts), as activations are calibrated.

The error can be counted after an elementwise function (``through``): where a tensor's only
reader is an activation, what matters is the error in the activation's output. A SiLU input's
values below about -5 all come out near 0, so an error there costs almost nothing, while the
positive side passes through at full weight: measured on the input, the search spends levels on
the negative tail; measured after SiLU, it gives them to the values the next layer sees.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from dgh_deploy.calibration.observers.base import Range
from dgh_deploy.calibration.observers.grid import QuantGrid
from dgh_deploy.calibration.observers.histogram import Histogram, TwoLookHistogram


def mse_range(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, grid: QuantGrid,
              counts: torch.Tensor | None = None, steps: int = 64, two_sided: bool = False,
              through: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``values`` (C x K), the clipped range with the least squared rounding error.

    Candidates shrink ``[lo, hi]`` by fractions ``1/steps .. 1``: both ends by one factor,
    or (``two_sided``) each end by its own factor, which suits activations whose two tails
    differ. ``counts`` weighs the values (a histogram's bin counts). ``through``: the error is
    that of ``through(x)`` (the activation reading the tensor), not of ``x``.
    """
    f = through if through is not None else _identity
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
        err = (w[:, None, :] * (f(v) - f(grid.fake_quant(v, scale, zero, qmin, qmax))) ** 2).sum(-1)  # C x block
        e, k = err.min(dim=1)
        better = e < best_err
        best_err = torch.where(better, e, best_err)
        best_lo = torch.where(better, c_lo.gather(1, k[:, None])[:, 0], best_lo)
        best_hi = torch.where(better, c_hi.gather(1, k[:, None])[:, 0], best_hi)
    return best_lo.float(), best_hi.float()


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def histogram_mse_range(hist: Histogram, grid: QuantGrid,
                        through: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Range:
    """The least-error range of a tensor's histogram (the error after ``through``, if given); both
    ends searched apart when it has both signs."""
    assert hist.counts is not None
    lo, hi = mse_range(hist.centers()[None], torch.tensor([min(hist.lo, 0.0)]), torch.tensor([max(hist.hi, 0.0)]),
                       grid, counts=hist.counts[None], two_sided=hist.lo < 0 < hist.hi, through=through)
    return float(lo[0]), float(hi[0])


class MseObserver(TwoLookHistogram):
    """Two looks: the extremes, then a histogram between them; the range is :func:`histogram_mse_range`'s
    (its error counted after ``through``, the elementwise activation reading the tensor, if given)."""

    def __init__(self, grid: QuantGrid, bins: int = 2048,
                 through: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__(bins)
        self.grid = grid
        self.through = through

    def range(self) -> Range:
        return histogram_mse_range(self.hist, self.grid, self.through)
