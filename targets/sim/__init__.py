"""Fake-quant simulation: target, calibrator, fake-quant layers, GPTQ (ranges: calibration.observers)."""

from dgh_deploy.targets.sim.target import SimTarget

TARGET = SimTarget

__all__ = ["TARGET", "SimTarget"]
