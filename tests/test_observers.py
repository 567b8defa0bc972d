"""The shared observer library: one interface (batches in, range out), numpy and torch alike, the
numerics each target calibrated with before the library existed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dgh_deploy.calibration.observers import (
    EntropyObserver,
    Histogram,
    HistogramObserver,
    MinMaxObserver,
    MseObserver,
    Observer,
    PercentileObserver,
    PerChannelMinMaxObserver,
    QuantGrid,
    check_percentile,
    estimate_range,
    observe_all,
    tail_count,
)
from dgh_deploy.errors import DGHError


def batches(signed: bool = True) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = [rng.standard_t(3, size=(2, 4, 6, 6)).astype(np.float32) * (1 + i) for i in range(4)]
    return out if signed else [np.abs(b) for b in out]


def every_observer() -> list[Observer]:
    grid = QuantGrid(8, symmetric=False)
    return [MinMaxObserver(), PerChannelMinMaxObserver(axis=1), PercentileObserver(percentile=99.0, batches=4),
            MseObserver(grid), EntropyObserver(), HistogramObserver("percentile", grid, 99.0)]


@pytest.mark.parametrize("index", range(len(every_observer())))
def test_every_observer_takes_numpy_and_torch_alike(index: int) -> None:
    data = batches()
    from_numpy = observe_all(every_observer()[index], data)
    from_torch = observe_all(every_observer()[index], [torch.from_numpy(b) for b in data])
    assert from_numpy == from_torch
    lo, hi = from_numpy
    assert lo <= 0.0 < hi and all(isinstance(v, float) for v in (lo, hi))


def test_min_max_per_tensor_and_per_channel() -> None:
    data = batches()
    every = np.concatenate(data)
    assert observe_all(MinMaxObserver(), data) == (float(every.min()), float(every.max()))
    per_channel = PerChannelMinMaxObserver(axis=1)
    observe_all(per_channel, data)
    lo, hi = per_channel.ranges()
    np.testing.assert_array_equal(lo, every.min(axis=(0, 2, 3)))
    np.testing.assert_array_equal(hi, every.max(axis=(0, 2, 3)))


def test_percentile_from_the_share_is_the_order_statistic() -> None:
    data = batches()
    k = tail_count(99.0, data[0].size, len(data))
    assert k == math.ceil(0.01 * sum(b.size for b in data))
    lo, hi = observe_all(PercentileObserver(percentile=99.0, batches=len(data)), data)
    assert (lo, hi) == observe_all(PercentileObserver(k), data)
    ordered = np.sort(np.concatenate([b.ravel() for b in data]))
    assert hi == ordered[-k] and lo == min(float(ordered[k - 1]), 0.0)
    with pytest.raises(DGHError, match="percentile 40"):
        PercentileObserver(percentile=40.0)


@pytest.mark.parametrize("signed", [True, False])
def test_the_histogram_observers_read_as_the_sim_estimator_does(signed: bool) -> None:
    data = [torch.from_numpy(b) for b in batches(signed)]
    grid = QuantGrid(8, symmetric=False)
    hist = Histogram()
    for b in data:
        hist.observe_range(b)
    for b in data:
        hist.observe_counts(b)
    assert observe_all(MseObserver(grid), data) == estimate_range(hist, "mse", grid)
    for method in ("minmax", "percentile", "mse"):
        observer = HistogramObserver(method, grid, 99.9)
        assert observer.passes == (1 if method == "minmax" else 2)
        assert observe_all(observer, data) == estimate_range(hist, method, grid, 99.9)


def test_the_entropy_observer_is_symmetric_and_names_its_methods() -> None:
    data = batches()
    observer = EntropyObserver()
    lo, hi = observe_all(observer, data)
    assert lo == -hi and hi == observer.compute_amax("entropy") and 0 < hi <= observer.amax
    assert observer.compute_amax("minmax") == observer.compute_amax("max") == observer.amax
    with pytest.raises(ValueError, match="unknown amax method"):
        observer.compute_amax("mse")


@pytest.mark.parametrize("percentile", [50.0, 100.5, -1.0])
def test_one_percentile_check(percentile: float) -> None:
    with pytest.raises(DGHError, match=r"outside \(50, 100\]"):
        check_percentile(percentile)
    check_percentile(100.0)
    check_percentile(50.01)


def test_an_activation_reading_the_tensor_sets_where_the_error_counts() -> None:
    """A SiLU input's error is counted after the SiLU: its long negative tail (which SiLU maps to ~0)
    is clipped harder and the positive side gets the levels, with less error where the next layer looks."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(np.concatenate([rng.normal(-12, 3, 60_000), rng.normal(1, 1.5, 40_000)]).astype(np.float32))
    grid = QuantGrid(8, symmetric=False)
    plain, after = MseObserver(grid), MseObserver(grid, through=torch.nn.functional.silu)
    identity = MseObserver(grid, through=lambda v: v)
    for o in (plain, after, identity):
        observe_all(o, [x])

    def silu_error(r: tuple[float, float]) -> float:
        scale, zero, qmin, qmax = grid.params(torch.tensor(r[0]), torch.tensor(r[1]))
        q = grid.fake_quant(x.double(), scale.double(), zero.double(), qmin.double(), qmax.double())
        return float(((torch.nn.functional.silu(q) - torch.nn.functional.silu(x.double())) ** 2).mean())

    assert identity.range() == plain.range()
    assert after.range()[0] > plain.range()[0] + 5  # the tail SiLU flattens is given up
    assert after.range()[1] >= plain.range()[1]
    assert silu_error(after.range()) < 0.5 * silu_error(plain.range())


def test_headroom_raises_only_a_positive_top() -> None:
    from dgh_deploy.calibration.observers import with_headroom

    assert with_headroom((-2.0, 4.0), 1.5) == (-2.0, 6.0)
    assert with_headroom((-2.0, 4.0), 1.0) == (-2.0, 4.0)
    assert with_headroom((-3.0, -1.0), 1.5) == (-3.0, -1.0)  # no room above without moving the zero
