"""Calibration images as data: the :class:`CalibrationSet` file format and the generation cache.

A :class:`CalibrationSet` is N images in the model's input space (after its own normalisation),
N x 3 x H x W float32, plus how they were made. Every target's calibrator
(:class:`dgh_deploy.targets.base.Calibrator`) observes one the same way.
"""

from dgh_deploy.calibration.calibration_set import CalibrationSet

__all__ = ["CalibrationSet"]
