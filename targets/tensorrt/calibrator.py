"""The TensorRT calibrator: per-tensor activation ranges from the calibration set, on the CPU.

It runs the float ONNX model on ONNX Runtime's CPU, batch by batch, with every tensor that needs
a range added as a graph output, and feeds one |x| histogram per tensor
(:class:`~dgh_deploy.targets.tensorrt.ranges.AbsHistogram`; no activation is kept past its
batch). The ranges (amax) are read off the histograms by the target's :class:`ActRange`: entropy
as TensorRT's EntropyCalibration2 computes it, a percentile, or max.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dgh_deploy.targets.base import Calibrator, Layout
from dgh_deploy.targets.tensorrt.ranges import AbsHistogram


@dataclass(frozen=True)
class ActRange:
    """How activation ranges are read from the |x| histograms; ``percentile`` only with that method."""

    method: str
    percentile: float | None = None

    def amax(self, hist: AbsHistogram) -> float:
        if self.percentile is None:
            return hist.compute_amax(self.method)
        return hist.compute_amax(self.method, self.percentile)

    def __str__(self) -> str:
        return self.method if self.percentile is None else f"{self.method} {self.percentile:g}"


class TensorRTCalibrator(Calibrator[dict[str, float]]):
    """Yields ``tensor -> amax`` for ``tensors`` of a float ONNX model (a path or ModelProto)."""

    layout: ClassVar[Layout] = "NCHW"

    def __init__(self, onnx_model: Any, tensors: list[str], act_range: ActRange, batch_size: int = 16,
                 threads: int = 2) -> None:
        super().__init__(batch_size)
        self.onnx_model = onnx_model
        self.tensors = list(tensors)
        self.act_range = act_range
        self.threads = threads
        self.histograms: dict[str, AbsHistogram] = {}
        self._runner: Any = None
        self._index: dict[str, int] = {}

    def begin_pass(self, index: int) -> None:
        from dgh_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

        self._runner = OnnxRuntimeRunner(_with_outputs(self.onnx_model, self.tensors), self.threads)
        self._index = {name: i for i, name in enumerate(self._runner.output_names)}
        self.histograms = {name: AbsHistogram() for name in self.tensors}

    def observe(self, batch: np.ndarray) -> None:
        outs = self._runner.infer(batch)
        for name, hist in self.histograms.items():
            hist.collect(outs[self._index[name]], name)

    def result(self) -> dict[str, float]:
        self._runner = None
        return {name: self.act_range.amax(hist) for name, hist in self.histograms.items()}


def _with_outputs(onnx_model: Any, tensors: list[str]) -> bytes:
    """The model with ``tensors`` added as float outputs, serialised for ORT."""
    import onnx

    model = onnx.load(str(onnx_model)) if isinstance(onnx_model, (str, Path)) else onnx_model
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    present = {o.name for o in augmented.graph.output}
    for name in tensors:
        if name not in present:
            augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return augmented.SerializeToString()
