"""The TFLite calibrator: a CalibrationSet as onnx2tf's ``custom_input_op_name_np_data_path`` entry.

onnx2tf feeds its representative dataset as ``(data - mean) / std``. Our images are already in the
model's input space (the model's own normalisation applied), so the file holds them as they are
and the entry carries mean 0 and std 1: onnx2tf's normalisation becomes the identity and the
converter calibrates on exactly what the PyTorch model sees.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dgh_deploy.artifacts import atomic_path
from dgh_deploy.calibration.calibrator import Calibrator
from dgh_deploy.errors import DGHError


class TFLiteCalibrator(Calibrator):
    """Writes the calibration images as one N x H x W x C float32 ``.npy`` (onnx2tf works in NHWC)."""

    layout = "NHWC"

    def check(self, imgsz: tuple[int, int], channels: int = 3) -> None:
        """Refuse a set the converter would choke on (or silently calibrate wrongly with)."""
        n, c, h, w = self.calib.images.shape
        if (h, w) != tuple(imgsz) or c != channels:
            raise DGHError(
                f"calibration images are {n} x {c} x {h} x {w} but the model takes "
                f"{channels} x {imgsz[0]} x {imgsz[1]}",
                "generate or load the calibration set at the model's input size",
            )
        if not np.isfinite(self.calib.images).all():
            raise DGHError(
                "calibration images hold NaN or Inf values",
                "regenerate the calibration set (a diverged generation writes non-finite pixels)",
            )

    def to_nhwc(self) -> np.ndarray:
        return np.ascontiguousarray(self.calib.images.transpose(0, 2, 3, 1), dtype=np.float32)

    def feed(self, **kwargs: Any) -> list[Any]:
        """Write ``path`` (keyword) and return ``[input_name, path, mean, std]`` for onnx2tf.

        Keywords: ``path`` (where the .npy goes), ``imgsz`` (the model's (h, w), checked first),
        ``input_name`` (the ONNX input, default ``images``).
        """
        path = Path(kwargs["path"])
        imgsz = kwargs.get("imgsz")
        if imgsz is not None:
            self.check(tuple(imgsz))
        data = self.to_nhwc()
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, data)
        channels = data.shape[-1]
        # 4-D so that it broadcasts against N x H x W x C exactly as onnx2tf's own defaults do.
        mean = np.zeros((1, 1, 1, channels), np.float32)
        std = np.ones((1, 1, 1, channels), np.float32)
        return [kwargs.get("input_name", "images"), str(path), mean, std]
