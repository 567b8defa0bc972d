"""Fake-quant simulation: target, calibrator, grids and range estimators, fake-quant layers, GPTQ."""

from dgh_deploy.targets.sim.target import SimTarget

TARGET = SimTarget

__all__ = ["TARGET", "SimTarget"]
