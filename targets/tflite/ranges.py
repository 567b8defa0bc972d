"""The project's activation ranges for a float .tflite: min/max, percentile or MSE per tensor.

Both converters quantize a float .tflite they calibrated themselves (TensorFlow's calibrator
for onnx2tf, ai-edge-quantizer's for litert-torch). Their ranges are the tensors' min and max
(or a moving average of them): one extreme activation of one image sets the whole range. Here
the float file runs on every calibration image with all tensors kept, and each tensor's range
is read by the chosen method:

* ``minmax``: the extremes, in one look at each image;
* ``percentile``: the exact order statistics of the two tails, in the same single look: each
  tensor keeps only its ``k`` largest and ``k`` smallest values so far (``k`` is the tail's share
  of all the values it will see), so no histogram is filled (a histogram of every tensor took
  YOLOv5n at 320 about 2 s an image);
* ``mse``: a second look fills a histogram between the extremes, and the sim target's estimator
  (:func:`~dgh_deploy.targets.sim.ranges.estimate_range`) picks the clipped range with the least
  squared rounding error.

The converters then quantize with these ranges in place of their own, so the two differ in graph
conversion only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

Ranges = dict[str, tuple[float, float]]  # tensor name -> (lo, hi)


class Tails:
    """One tensor's ``k`` largest and ``k`` smallest values over the images seen, exactly."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.top = np.empty(0, np.float32)
        self.bottom = np.empty(0, np.float32)

    def observe(self, values: np.ndarray) -> None:
        flat = values.ravel()
        # Once k values are kept, only those beyond the k-th can enter: a mask, not a sort, per image.
        top = flat if len(self.top) < self.k else flat[flat > self.top.min()]
        bottom = flat if len(self.bottom) < self.k else flat[flat < self.bottom.max()]
        self.top = _largest(np.concatenate([self.top, top]), self.k)
        self.bottom = _smallest(np.concatenate([self.bottom, bottom]), self.k)

    def range(self) -> tuple[float, float]:
        """(k-th smallest, k-th largest); the low end at the minimum when nothing is negative, as
        :func:`~dgh_deploy.targets.sim.ranges.estimate_range` reads a percentile."""
        lo, hi = float(self.bottom.max()), float(self.top.min())
        low_end = float(self.bottom.min())
        return (min(lo, 0.0) if low_end < 0 else low_end), hi


def _largest(values: np.ndarray, k: int) -> np.ndarray:
    return values if len(values) <= k else np.partition(values, len(values) - k)[-k:]


def _smallest(values: np.ndarray, k: int) -> np.ndarray:
    return values if len(values) <= k else np.partition(values, k - 1)[:k]


def activation_ranges(model: Path | bytes, images: Sequence[np.ndarray], method: str, percentile: float = 99.99,
                      act_bits: int = 8, threads: int = 2) -> Ranges:
    """Every float tensor's range over ``images`` (NHWC, one image each) by ``method``."""
    if method == "percentile":
        from dgh_deploy.targets.sim.ranges import check_percentile

        check_percentile(percentile)
    it = _interpreter(model, threads)
    extremes: dict[str, list[float]] = {}
    tails: dict[str, Tails] = {}
    share = 1.0 - percentile / 100.0
    for image in images:  # the one look every method takes
        for name, value in _activations(it, image).items():
            lo, hi = float(value.min()), float(value.max())
            seen = extremes.setdefault(name, [lo, hi])
            seen[0], seen[1] = min(seen[0], lo), max(seen[1], hi)
            if method == "percentile":
                if name not in tails:
                    tails[name] = Tails(max(1, math.ceil(share * value.size * len(images))))
                tails[name].observe(value)
    if method == "minmax":
        return {name: (lo, hi) for name, (lo, hi) in extremes.items()}
    if method == "percentile":
        return {name: t.range() for name, t in tails.items()}
    return _mse_ranges(it, images, extremes, act_bits)


def _mse_ranges(it: Any, images: Sequence[np.ndarray], extremes: dict[str, list[float]], act_bits: int) -> Ranges:
    """The second look: histograms between each tensor's extremes, then the least-error range."""
    import torch

    from dgh_deploy.targets.sim.ranges import QuantGrid, estimate_range

    hists = {name: _histogram(lo, hi) for name, (lo, hi) in extremes.items()}
    for image in images:
        for name, value in _activations(it, image).items():
            hists[name].observe_counts(torch.from_numpy(value))
    grid = QuantGrid(act_bits, symmetric=act_bits == 16)
    return {name: estimate_range(h, "mse", grid) for name, h in hists.items()}


def _histogram(lo: float, hi: float) -> Any:
    from dgh_deploy.targets.sim.ranges import Histogram

    h = Histogram()
    h.lo, h.hi = lo, hi
    return h


def _interpreter(model: Path | bytes, threads: int) -> Any:  # LiteRT's Interpreter, imported lazily
    from dgh_deploy.runtime.litert_runner import open_interpreter

    return open_interpreter(model, num_threads=threads, preserve_all=True, delegates=False)


def _activations(it: Any, image: np.ndarray) -> dict[str, np.ndarray]:
    """Every float tensor an op writes (and the input), for one NHWC image."""
    inp = it.get_input_details()[0]
    it.set_tensor(inp["index"], np.ascontiguousarray(image, np.float32).reshape(inp["shape"]))
    it.invoke()
    names = {int(t["index"]): str(t["name"]) for t in it.get_tensor_details()}
    produced = [int(i) for op in it._get_ops_details() for i in op["outputs"]]  # no public op list
    out = {names[int(inp["index"])]: it.get_tensor(inp["index"])}
    for idx in produced:
        value = it.get_tensor(idx)
        if value.dtype == np.float32:
            out[names[idx]] = value
    return out
