"""TensorFlow's full-integer quantizer with the project's activation ranges in place of its min/max.

TensorFlow's converter calibrates (records each tensor's min and max into a calibrated float
model) and then quantizes from those statistics. Between the two steps the statistics are
replaced by :func:`~dgh_deploy.targets.tflite.ranges.activation_ranges` of the same images (the
shared observers, fed every tensor of the calibrated file), so
everything else (the converter's graph passes, I/O types, per-channel weights) stays
TensorFlow's own; with min/max and no output headroom (a detector's) nothing is touched and the file
is TensorFlow's, bit for bit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from dgh_deploy.targets.tflite.ranges import Ranges, activation_ranges


@contextlib.contextmanager
def project_ranges(images: np.ndarray, method: str, percentile: float,
                   output_headroom: float = 1.0) -> Iterator[dict[str, int]]:
    """While open, TensorFlow's converter quantizes with ``method``'s ranges of ``images`` (NHWC), the
    outputs' tops times ``output_headroom``; the dict it yields counts the tensors whose range was
    replaced (``replaced``)."""
    counts = {"replaced": 0}
    if method == "minmax" and output_headroom == 1.0:
        yield counts
        return
    from tensorflow.lite.python.optimize import calibrator

    tf_calibrator = calibrator.Calibrator

    class WithProjectRanges(tf_calibrator):  # type: ignore[misc, valid-type]
        def calibrate(self, dataset_gen: Any) -> bytes:
            calibrated = bytes(super().calibrate(dataset_gen))
            samples = [images[i : i + 1] for i in range(len(images))]
            ranges = activation_ranges(calibrated, samples, method, percentile, output_headroom=output_headroom)
            content, counts["replaced"] = with_ranges(calibrated, ranges)
            return content

    calibrator.Calibrator = WithProjectRanges  # lite.py looks it up in this module at each conversion
    try:
        yield counts
    finally:
        calibrator.Calibrator = tf_calibrator


def with_ranges(calibrated: bytes, ranges: Ranges) -> tuple[bytes, int]:
    """The calibrated model with each named tensor's recorded min and max set to ``ranges``; how many."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    count = 0
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            q = tensor.quantization
            name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
            if q is None or q.min is None or len(q.min) != 1 or name not in ranges:
                continue  # a tensor without calibration statistics (weights, constants)
            lo, hi = ranges[name]
            q.min, q.max = [float(lo)], [float(hi)]
            count += 1
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), count
