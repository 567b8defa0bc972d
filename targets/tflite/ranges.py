"""The project's activation ranges for a float .tflite: min/max, percentile or MSE per tensor.

Both converters quantize a float .tflite they calibrated themselves (TensorFlow's calibrator
for onnx2tf, ai-edge-quantizer's for litert-torch). Their ranges are the tensors' min and max
(or a moving average of them): one extreme activation of one image sets the whole range. Here
the float file runs on every calibration image with all tensors kept; a first look fixes each
tensor's min and max, a second fills a histogram between them, and the sim target's estimators
(:func:`~dgh_deploy.targets.sim.ranges.estimate_range`) read the range by the chosen method.
The converters then quantize with these ranges in place of their own, so the two differ in graph
conversion only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

Ranges = dict[str, tuple[float, float]]  # tensor name -> (lo, hi)


def activation_ranges(model: Path | bytes, images: Sequence[np.ndarray], method: str, percentile: float = 99.99,
                      act_bits: int = 8) -> Ranges:
    """Every float tensor's range over ``images`` (NHWC, one image each) by ``method``."""
    import torch

    from dgh_deploy.targets.sim.ranges import Histogram, QuantGrid, estimate_range

    it = _interpreter(model)
    hists: dict[str, Histogram] = {}
    for image in images:  # first look: each tensor's min and max
        for name, value in _activations(it, image).items():
            hists.setdefault(name, Histogram()).observe_range(torch.from_numpy(value))
    if method != "minmax":
        for image in images:  # second look: the histogram between them
            for name, value in _activations(it, image).items():
                hists[name].observe_counts(torch.from_numpy(value))
    grid = QuantGrid(act_bits, symmetric=act_bits == 16)
    return {name: estimate_range(h, method, grid, percentile) for name, h in hists.items()}


def _interpreter(model: Path | bytes) -> Any:  # LiteRT's Interpreter, imported lazily
    from dgh_deploy.runtime.litert_runner import open_interpreter

    return open_interpreter(model, num_threads=2, preserve_all=True, delegates=False)


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
