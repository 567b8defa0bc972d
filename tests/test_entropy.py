"""TensorRT-style entropy calibration against a plain NumPy reference, histogram growth, max and percentile."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest

from dgh_deploy.calibration.observers import MAX_BINS, NUM_BINS, EntropyObserver
from dgh_deploy.errors import DGHError
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.targets import TargetOptions
from dgh_deploy.targets.tensorrt.calibrator import canonical_act_range
from dgh_deploy.targets.tensorrt.target import act_range_for


def reference_kl(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """EntropyCalibration2 written out candidate by candidate, straight from its definition.

    For i kept bins: the reference is bins[:i] with the rest folded into bin i-1; the candidate
    merges bins[:i] into 128 levels (np.digitize over linspace(0, i, 129)) and spreads each
    level's count evenly over its non-empty bins; KL(ref || cand) after normalising both.
    """
    bins = hist.astype(np.float64).copy()
    bins[0] = bins[1]
    cands, divs = [], []
    for i in range(128, len(bins) + 1):
        ref = bins[:i].copy()
        ref[-1] += bins[i:].sum()
        level = np.digitize(np.arange(i), np.linspace(0, i, 129)) - 1
        cand = np.zeros(i)
        for lv in np.unique(level):
            members = level == lv
            nonempty = members & (bins[:i] > 0)
            if nonempty.any():
                cand[nonempty] = bins[:i][members].sum() / nonempty.sum()
        p, q = ref / ref.sum(), cand / cand.sum()
        if np.any((p > 0) & (q == 0)):
            kl = np.inf
        else:
            m = p > 0
            kl = float(np.sum(p[m] * np.log(p[m] / q[m])))
        cands.append(i)
        divs.append(kl)
    return np.asarray(cands), np.asarray(divs)


def reference_threshold(x: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    a = np.abs(x).astype(np.float64)  # float64 edges k * max / 2048, as the module's bins are defined
    hist, edges = np.histogram(a, bins=NUM_BINS, range=(0.0, float(a.max())))
    cands, divs = reference_kl(hist)
    best = len(divs) - 1 - int(np.argmin(divs[::-1]))  # the last minimum
    return float(edges[cands[best]]), hist, edges, divs


def gaussian() -> np.ndarray:
    return np.random.default_rng(0).normal(0.0, 1.0, 200_000).astype(np.float32)


def laplace_with_outliers() -> np.ndarray:
    rng = np.random.default_rng(1)
    x = rng.laplace(0.0, 1.0, 200_000)
    outliers = rng.uniform(25.0, 40.0, 30) * rng.choice([-1.0, 1.0], 30)
    return np.concatenate([x, outliers]).astype(np.float32)


def relu_gaussian() -> np.ndarray:
    """Half the values exactly 0: the spike in bin 0 that EntropyCalibration2 replaces by bin 1."""
    return np.maximum(np.random.default_rng(2).normal(0.5, 1.0, 200_000), 0.0).astype(np.float32)


@pytest.mark.parametrize("make", [gaussian, laplace_with_outliers, relu_gaussian])
def test_entropy_threshold_matches_reference(make) -> None:
    x = make()
    h = EntropyObserver()
    h.collect(x)
    expected, ref_hist, ref_edges, ref_divs = reference_threshold(x)
    np.testing.assert_array_equal(h.counts, ref_hist)
    np.testing.assert_allclose(h.edges, ref_edges, rtol=1e-12)
    got = h.compute_amax("entropy")
    if got != pytest.approx(expected, rel=1e-9):
        # Only a floating-point near-tie may pick another bin: its reference KL must equal the minimum.
        i = round(got / h.width)
        assert ref_divs[i - 128] == pytest.approx(ref_divs.min(), rel=1e-9, abs=1e-12), (got, expected)


def test_entropy_ignores_outliers_and_clips_less_than_it_keeps() -> None:
    x = laplace_with_outliers()
    amax = EntropyObserver()
    amax.collect(x)
    t = amax.compute_amax("entropy")
    bulk = float(np.percentile(np.abs(x[:-30]), 99.9))
    assert bulk < t < 0.5 * float(np.abs(x).max())


def test_growth_keeps_bin_width_and_matches_one_shot() -> None:
    x = gaussian()
    batches = np.array_split(x, 8)
    batches[0] = batches[0] * 0.5  # a first batch with a narrower range forces growth later
    data = np.concatenate(batches)
    grown = EntropyObserver()
    for b in batches:
        grown.collect(b)
    first_width = float(np.abs(batches[0]).max()) / NUM_BINS
    assert grown.width == pytest.approx(first_width, rel=1e-12)
    assert len(grown.counts) > NUM_BINS and grown.edges[-1] >= np.abs(data).max()
    # Earlier counts never move: the first batch's 2048 bins (its max in the last one, as in
    # np.histogram), then every later batch over the grown edges of the same width.
    first = np.abs(batches[0]).astype(np.float64)
    expected = np.zeros(len(grown.counts), np.int64)
    expected[:NUM_BINS] = np.histogram(first, bins=NUM_BINS, range=(0.0, first.max()))[0]
    rest = np.abs(np.concatenate(batches[1:])).astype(np.float64)
    expected += np.histogram(rest, bins=grown.edges)[0]
    np.testing.assert_array_equal(grown.counts, expected)

    one_shot = EntropyObserver()
    one_shot.collect(data)
    coarser = max(grown.width, one_shot.width)
    assert abs(grown.compute_amax("entropy") - one_shot.compute_amax("entropy")) <= coarser + 1e-9


def test_far_outlier_merges_bins_instead_of_exploding() -> None:
    h = EntropyObserver()
    h.collect(np.linspace(0.0, 1.0, 10_000, dtype=np.float32))
    h.collect(np.array([1e4], dtype=np.float32))  # 20 million bins at the first width
    assert len(h.counts) <= MAX_BINS and h.counts.sum() == 10_001
    assert h.edges[-1] >= 1e4 and h.amax == pytest.approx(1e4)
    ratio = h.width / (1.0 / NUM_BINS)
    assert ratio == pytest.approx(2 ** round(np.log2(ratio)))  # widths only double


def test_max_and_percentile() -> None:
    x = laplace_with_outliers()
    h = EntropyObserver()
    for b in np.array_split(x, 5):
        h.collect(b)
    assert h.compute_amax("max") == pytest.approx(float(np.abs(x).max()))
    assert h.compute_amax("minmax") == h.compute_amax("max")
    p = h.compute_amax("percentile", 99.9)
    assert abs(p - float(np.percentile(np.abs(x), 99.9))) <= 2 * h.width
    assert h.compute_amax("percentile", 100.0) == pytest.approx(h.amax)


def test_zeros_before_data_and_all_zero_tensor() -> None:
    h = EntropyObserver()
    h.collect(np.zeros(1000, np.float32))
    assert h.counts is None and h.compute_amax("entropy") == 0.0
    h.collect(np.random.default_rng(2).normal(size=5000).astype(np.float32))
    assert h.counts.sum() == 6000 and h.counts[0] >= 1000


def test_non_finite_and_unknown_range_are_user_errors() -> None:
    with pytest.raises(DGHError, match="NaN or Inf"):
        EntropyObserver().collect(np.array([1.0, np.nan], np.float32), "conv1")
    assert canonical_act_range("") == "entropy" and canonical_act_range("MinMax") == "max"
    with pytest.raises(DGHError, match="entropy"):
        canonical_act_range("mse")


@pytest.mark.parametrize(("task", "act_range", "percentile", "expected"), [
    ("classify", "", None, "entropy"),
    ("detect", "", None, "percentile 99.999"),
    ("detect", "", 99.9, "percentile 99.9"),
    ("detect", "max", None, "max"),
    ("detect", "percentile", None, "percentile 99.999"),
    ("classify", "percentile", None, "percentile 99.99"),
])
def test_tensorrt_range_defaults_per_task(task: str, act_range: str, percentile: float | None, expected: str) -> None:
    model = cast(LoadedModel, SimpleNamespace(task=task))
    chosen = act_range_for(model, TargetOptions(act_range=act_range, percentile=percentile))
    assert str(chosen) == expected


def test_a_percentile_the_range_method_ignores_is_refused() -> None:
    model = cast(LoadedModel, SimpleNamespace(task="classify"))
    with pytest.raises(DGHError, match=r"--percentile 99\.9 has no effect") as err:
        act_range_for(model, TargetOptions(percentile=99.9))  # entropy, the classifier default
    assert "--act-range percentile" in err.value.fix
