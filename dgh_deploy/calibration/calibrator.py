"""What every target's calibrator has in common."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from dgh_deploy.calibration.calibration_set import CalibrationSet


class Calibrator(ABC):
    """Feeds a :class:`CalibrationSet` to one target's converter, in its layout and units.

    Subclasses state the layout their converter wants and implement :meth:`feed`, which
    returns the target-specific object (a representative-dataset file, a TensorRT
    calibrator, a dict of per-tensor ranges, ...).
    """

    layout: str = "NCHW"

    def __init__(self, calib: CalibrationSet, batch_size: int = 1) -> None:
        self.calib = calib
        self.batch_size = batch_size

    def batches(self):
        return self.calib.batches(self.batch_size, self.layout)

    @abstractmethod
    def feed(self, **kwargs: Any) -> Any:
        """Return what the converter consumes."""
