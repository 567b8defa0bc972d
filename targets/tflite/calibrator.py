"""The TFLite calibrator: a calibration set as onnx2tf's ``custom_input_op_name_np_data_path`` entry.

onnx2tf feeds its representative dataset as ``(data - mean) / std``. Our images are already in the
model's input space (the model's own normalisation applied), so the file holds them as they are
and the entry carries mean 0 and std 1: onnx2tf's normalisation becomes the identity and the
converter calibrates on exactly what the PyTorch model sees.
"""

from __future__ import annotations

from dataclasses import dataclass
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
        """Refuse a set the converter would choke on (or silently calibrate wrongly with)."""
        n, c, h, w = calib.images.shape
        if (h, w) != self.imgsz or c != self.channels:
            raise DGHError(
                f"calibration images are {n} x {c} x {h} x {w} but the model takes "
                f"{self.channels} x {self.imgsz[0]} x {self.imgsz[1]}",
                "generate or load the calibration set at the model's input size",
            )
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
