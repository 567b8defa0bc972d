"""The common calibration interface: any calibration set feeds any target's calibrator.

A :class:`CalibrationSet` is N images in the model's input space (after its own
normalisation), N x 3 x H x W float32, plus how they were made. Each target implements a
:class:`Calibrator` that turns the set into what its converter consumes (a representative
dataset in NHWC for TFLite, batches and per-tensor ranges for TensorRT, ...).
"""

from dgh_deploy.calibration.calibration_set import CalibrationSet
from dgh_deploy.calibration.calibrator import Calibrator

__all__ = ["CalibrationSet", "Calibrator"]
