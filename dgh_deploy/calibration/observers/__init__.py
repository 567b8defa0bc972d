"""One observer library for every target: fed a tensor batch by batch, each says its range ``(lo, hi)``.

======================================  ==============================================================
observer                                range
======================================  ==============================================================
:class:`MinMaxObserver`                 the extremes (per tensor)
:class:`PerChannelMinMaxObserver`       each channel's extremes
:class:`PercentileObserver`             both tails clipped at a percentile, exactly (order statistics)
:class:`MseObserver`                    least squared rounding error on a :class:`QuantGrid` (histogram)
:class:`EntropyObserver`                TensorRT's EntropyCalibration2 on a histogram of ``|x|``
                                        (also its max and percentile readings)
:class:`HistogramObserver`              a signed histogram read by minmax, percentile or mse
======================================  ==============================================================

The targets' calibrators are these observers plus what their format needs: TensorRT's cache
lines, TFLite's per-tensor ranges in the converters' statistics, sim's fake-quant grids.
:func:`check_percentile` is the one percentile check; :func:`observe_all` feeds a list of batches
in every look an observer takes; :func:`with_headroom` raises a range's top (a task's outputs).
"""

from dgh_deploy.calibration.observers.base import (
    Observer,
    Range,
    as_numpy,
    as_torch,
    check_percentile,
    observe_all,
    with_headroom,
)
from dgh_deploy.calibration.observers.entropy import MAX_BINS, NUM_BINS, EntropyObserver
from dgh_deploy.calibration.observers.grid import QuantGrid
from dgh_deploy.calibration.observers.histogram import Histogram, percentile_range
from dgh_deploy.calibration.observers.methods import METHODS, HistogramObserver, estimate_range
from dgh_deploy.calibration.observers.minmax import MinMaxObserver, PerChannelMinMaxObserver
from dgh_deploy.calibration.observers.mse import MseObserver, histogram_mse_range, mse_range
from dgh_deploy.calibration.observers.percentile import PercentileObserver, tail_count

__all__ = [
    "MAX_BINS", "METHODS", "NUM_BINS", "EntropyObserver", "Histogram", "HistogramObserver", "MinMaxObserver",
    "MseObserver", "Observer", "PerChannelMinMaxObserver", "PercentileObserver", "QuantGrid", "Range", "as_numpy",
    "as_torch", "check_percentile", "estimate_range", "histogram_mse_range", "mse_range", "observe_all",
    "percentile_range", "tail_count", "with_headroom",
]
