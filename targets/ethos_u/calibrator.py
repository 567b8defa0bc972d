"""The Ethos-U calibrator: TFLite's representative set, unchanged.

Vela compiles the full-integer file that onnx2tf calibrated, so the Ethos-U target calibrates
exactly as tflite-int8 does: one NHWC float32 array of the calibration images. The subclass
exists so the target's own folder names its calibrator, as every target's does, without a second
implementation to keep in step.
"""

from __future__ import annotations

from dgh_deploy.targets.tflite.calibrator import TFLiteCalibrator


class EthosUCalibrator(TFLiteCalibrator):
    """The calibration images as onnx2tf's representative data (see :class:`TFLiteCalibrator`)."""
