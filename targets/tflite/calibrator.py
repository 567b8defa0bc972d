"""The TFLite calibrators: the calibration set as each converter takes it.

:class:`TFLiteCalibrator` (onnx2tf) writes it as a ``custom_input_op_name_np_data_path`` entry;
:class:`LiteRTCalibrator` (litert-torch) reads the project's per-tensor ranges off the float file
(:mod:`.ranges`, on the shared observers), which ai-edge-quantizer then quantizes with.

onnx2tf feeds its representative dataset as ``(data - mean) / std``. Our images are already in the
model's input space (the model's own normalisation applied), so the file holds them as they are
and the entry carries mean 0 and std 1: onnx2tf's normalisation becomes the identity and the
converter calibrates on exactly what the PyTorch model sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dgh_deploy.artifacts import atomic_path
from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.errors import DGHError
from dgh_deploy.targets.base import Calibrator, Layout


@dataclass(frozen=True)
class RepresentativeData:
    """One onnx2tf input's representative data: the .npy file and the (identity) normalisation."""

    input_name: str
    path: Path
    mean: np.ndarray  # 1 x 1 x 1 x C, so it broadcasts against N x H x W x C as onnx2tf's own do
    std: np.ndarray

    def as_onnx2tf_entry(self) -> list[Any]:
        """``[input_name, path, mean, std]``, one item of ``custom_input_op_name_np_data_path``."""
        return [self.input_name, str(self.path), self.mean, self.std]


class TFLiteCalibrator(Calibrator[RepresentativeData]):
    """Writes the calibration images as one N x H x W x C float32 ``.npy`` (onnx2tf works in NHWC).

    The TFLite converter reads the whole representative set itself, so this calibrator keeps the
    batches and writes them once, at the end.
    """

    layout: ClassVar[Layout] = "NHWC"

    def __init__(self, path: Path, imgsz: tuple[int, int], input_name: str = "images", channels: int = 3) -> None:
        super().__init__(batch_size=64)
        self.path = Path(path)
        self.imgsz = tuple(imgsz)
        self.input_name = input_name
        self.channels = channels
        self._batches: list[np.ndarray] = []

    def check(self, calib: CalibrationSet) -> None:
        check_input_size(calib, self.imgsz, self.channels)
        super().check(calib)

    def begin_pass(self, index: int) -> None:
        self._batches = []

    def observe(self, batch: np.ndarray) -> None:
        self._batches.append(np.asarray(batch, dtype=np.float32))

    def result(self) -> RepresentativeData:
        data = np.ascontiguousarray(np.concatenate(self._batches))
        self._batches = []
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, data)
        channels = data.shape[-1]
        return RepresentativeData(self.input_name, self.path, np.zeros((1, 1, 1, channels), np.float32),
                                  np.ones((1, 1, 1, channels), np.float32))


@dataclass
class LiteRTCalibration:
    """The project's ranges that ai-edge-quantizer quantizes with, and the signature they belong to."""

    signature: str
    method: str  # how ``ranges`` were read: minmax, percentile or mse
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # tensor name -> (lo, hi)


class LiteRTCalibrator(Calibrator[LiteRTCalibration]):
    """Each activation's range by the project's method, for ai-edge-quantizer.

    The quantizer's own calibration keeps a moving average of each tensor's min and max over the
    samples, not their extremes: on CIFAR ResNet-20 it clipped the logits at 15.7 where the set
    reaches 25.4 (output SQNR 14 dB against onnx2tf's 17). So every range is ours, read from the
    float file by :func:`~dgh_deploy.targets.tflite.ranges.activation_ranges`, and the quantizer
    does not calibrate at all (:mod:`.litert_qsv`).
    """

    layout: ClassVar[Layout] = "NHWC"

    def __init__(self, float_model: Path, imgsz: tuple[int, int], method: str = "minmax",
                 percentile: float = 99.99, act_bits: int = 8, channels: int = 3, output_headroom: float = 1.0) -> None:
        super().__init__(batch_size=16)
        self.output_headroom = output_headroom
        self.float_model = Path(float_model)
        self.imgsz = tuple(imgsz)
        self.method = method
        self.percentile = percentile
        self.act_bits = act_bits
        self.channels = channels
        self._samples: list[np.ndarray] = []

    def check(self, calib: CalibrationSet) -> None:
        check_input_size(calib, self.imgsz, self.channels)
        super().check(calib)

    def begin_pass(self, index: int) -> None:
        self._samples = []

    def observe(self, batch: np.ndarray) -> None:
        self._samples.extend(np.ascontiguousarray(batch[i : i + 1], np.float32) for i in range(len(batch)))

    def result(self) -> LiteRTCalibration:
        from dgh_deploy.runtime.litert_runner import open_interpreter
        from dgh_deploy.targets.tflite.ranges import activation_ranges

        signature = next(iter(open_interpreter(self.float_model, delegates=False).get_signature_list()))
        ranges = activation_ranges(self.float_model, self._samples, self.method, self.percentile, self.act_bits,
                                   self.output_headroom)
        self._samples = []  # the ranges are all the quantizer takes
        return LiteRTCalibration(signature, self.method, ranges)


def check_input_size(calib: CalibrationSet, imgsz: tuple[int, ...], channels: int) -> None:
    """Refuse a set the converter would choke on (or silently calibrate wrongly with)."""
    n, c, h, w = calib.images.shape
    if (h, w) != tuple(imgsz) or c != channels:
        raise DGHError(
            f"calibration images are {n} x {c} x {h} x {w} but the model takes "
            f"{channels} x {imgsz[0]} x {imgsz[1]}",
            "generate or load the calibration set at the model's input size",
        )
