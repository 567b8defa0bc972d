"""The project's activation ranges for a float .tflite: every tensor the file computes, fed to observers.

Both converters quantize a float .tflite they calibrated themselves (TensorFlow's calibrator
for onnx2tf, ai-edge-quantizer's for litert-torch). Their ranges are the tensors' min and max
(or a moving average of them): one extreme activation of one image sets the whole range. Here
the float file runs on every calibration image with all tensors kept, and each tensor feeds an
observer of the shared library (:mod:`dgh_deploy.calibration.observers`):

* ``minmax``: :class:`~dgh_deploy.calibration.observers.MinMaxObserver`, in one look at each image;
* ``percentile``: :class:`~dgh_deploy.calibration.observers.PercentileObserver`, the exact order
  statistics of the two tails, in the same single look;
* ``mse``: :class:`~dgh_deploy.calibration.observers.MseObserver`, a second look filling a
  histogram between the extremes, then the clipped range with the least squared rounding error;
  for a tensor only an activation reads (a SiLU's input), the error after that activation
  (:mod:`.activation_readers`).

What is TFLite's own here is reading the file: which tensors an op writes, under which name. The
converters then quantize with these ranges in place of their own, so the two differ in graph
conversion only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dgh_deploy.calibration.observers import (
    MinMaxObserver,
    MseObserver,
    PercentileObserver,
    QuantGrid,
    check_percentile,
    with_headroom,
)
from dgh_deploy.targets.tflite.activation_readers import activation_readers

Ranges = dict[str, tuple[float, float]]  # tensor name -> (lo, hi)


def activation_ranges(model: Path | bytes, images: Sequence[np.ndarray], method: str, percentile: float = 99.99,
                      act_bits: int = 8, output_headroom: float = 1.0) -> Ranges:
    """Every float tensor's range over ``images`` (NHWC, one image each) by ``method``; the model
    outputs' tops times ``output_headroom`` (the task's, :class:`~dgh_deploy.tasks.base.TaskAdapter`)."""
    if method == "percentile":
        check_percentile(percentile)
    it = _interpreter(model)
    ranges = _method_ranges(it, images, method, percentile, act_bits)
    for out in it.get_output_details():
        if out["name"] in ranges:
            ranges[out["name"]] = with_headroom(ranges[out["name"]], output_headroom)
    return ranges


def _method_ranges(it: Any, images: Sequence[np.ndarray], method: str, percentile: float, act_bits: int) -> Ranges:
    extremes: dict[str, MinMaxObserver] = {}
    tails: dict[str, PercentileObserver] = {}
    for image in images:  # the one look every method takes
        for name, value in _activations(it, image).items():
            extremes.setdefault(name, MinMaxObserver()).observe(value)
            if method == "percentile":
                tails.setdefault(name, PercentileObserver(percentile=percentile, batches=len(images))).observe(value)
    if method == "minmax":
        return {name: o.range() for name, o in extremes.items()}
    if method == "percentile":
        return {name: o.range() for name, o in tails.items()}
    return _mse_ranges(it, images, extremes, act_bits)


def _mse_ranges(it: Any, images: Sequence[np.ndarray], extremes: dict[str, MinMaxObserver], act_bits: int) -> Ranges:
    """The second look: histograms between each tensor's extremes, then the least-error range."""
    grid = QuantGrid(act_bits, symmetric=act_bits == 16)
    readers = activation_readers(*_graph(it))
    observers = {name: MseObserver(grid, through=readers[name][1] if name in readers else None) for name in extremes}
    for name, o in extremes.items():  # the first look's extremes: no second pass over them
        observers[name].start_counts(*o.range())
    for image in images:
        for name, value in _activations(it, image).items():
            observers[name].observe(value)
    return {name: o.range() for name, o in observers.items()}


def _interpreter(model: Path | bytes) -> Any:  # LiteRT's Interpreter, imported lazily
    """One thread, whatever ``--threads`` says: the int8 file must not depend on the machine's cores.
    With two threads LiteRT's float kernels differ in the last bits; the ranges, and through them 251
    of YOLOv5n's 623 scales, moved by one part in 10^7, and its int8 mAP50-95 at 640 from 30.58 to
    30.00 on the same DGH set (2-core AVX2 CPU)."""
    from dgh_deploy.runtime.litert_runner import open_interpreter

    return open_interpreter(model, num_threads=1, preserve_all=True, delegates=False)


def _graph(it: Any) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """The file's ops (LiteRT has no public op list) and its tensor names by index."""
    return it._get_ops_details(), {int(t["index"]): str(t["name"]) for t in it.get_tensor_details()}


def _activations(it: Any, image: np.ndarray) -> dict[str, np.ndarray]:
    """Every float tensor an op writes (and the input), for one NHWC image."""
    inp = it.get_input_details()[0]
    it.set_tensor(inp["index"], np.ascontiguousarray(image, np.float32).reshape(inp["shape"]))
    it.invoke()
    ops, names = _graph(it)
    produced = [int(i) for op in ops for i in op["outputs"]]
    out = {names[int(inp["index"])]: it.get_tensor(inp["index"])}
    for idx in produced:
        value = it.get_tensor(idx)
        if value.dtype == np.float32:
            out[names[idx]] = finite_values(value)
    return out


def finite_values(value: np.ndarray) -> np.ndarray:
    """``value``, less any infinity: a max pool's padding is a PAD op filling with -inf in the float file
    (ShuffleNetV2's stem pool, via litert-torch); the int8 file pads with the lowest level instead, so
    the range is that of the values the images make."""
    finite = np.isfinite(value)
    return value if finite.all() else value[finite]
