"""The TensorRT calibrator: per-tensor activation ranges from the calibration set, on the CPU.

It runs the float ONNX model on ONNX Runtime's CPU, batch by batch, with every tensor that needs
a range added as a graph output, and feeds one entropy observer (a histogram of |x|,
:class:`~dgh_deploy.calibration.observers.EntropyObserver`) per tensor; no activation is kept
past its batch. The ranges (amax) are read off the histograms by the target's :class:`ActRange`:
entropy as TensorRT's EntropyCalibration2 computes it, a percentile, or max; the cache
(:mod:`.cache`) writes them in TensorRT's format. What is TensorRT's own here: the method names
its users pass (:func:`canonical_act_range`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dgh_deploy.calibration.observers import EntropyObserver
from dgh_deploy.errors import DGHError
from dgh_deploy.targets.base import Calibrator, Layout

ACT_RANGES = ("entropy", "max", "percentile")
_ALIASES = {"": "entropy", "entropy": "entropy", "kl": "entropy", "max": "max", "minmax": "max",
            "percentile": "percentile"}


def canonical_act_range(name: str) -> str:
    """``options.act_range`` -> one of :data:`ACT_RANGES` ("" means entropy, TensorRT's default)."""
    key = (name or "").strip().lower()
    if key not in _ALIASES:
        raise DGHError(
            f"activation range '{name}' is not available for TensorRT",
            "use --act-range entropy (TensorRT's default), max or percentile",
        )
    return _ALIASES[key]


@dataclass(frozen=True)
class ActRange:
    """How activation ranges are read from the |x| histograms; ``percentile`` only with that method."""

    method: str
    percentile: float | None = None

    def amax(self, hist: EntropyObserver) -> float:
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
        self.histograms: dict[str, EntropyObserver] = {}
        self._runner: Any = None
        self._index: dict[str, int] = {}

    def begin_pass(self, index: int) -> None:
        from dgh_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

        self._runner = OnnxRuntimeRunner(_with_outputs(self.onnx_model, self.tensors), self.threads)
        self._index = {name: i for i, name in enumerate(self._runner.output_names)}
        self.histograms = {name: EntropyObserver(name=name) for name in self.tensors}

    def observe(self, batch: np.ndarray) -> None:
        outs = self._runner.infer(batch)
        for name, hist in self.histograms.items():
            hist.observe(outs[self._index[name]])

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
