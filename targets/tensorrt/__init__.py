"""TensorRT INT8: target, CPU calibrator (entropy observers), Q/DQ insertion, calibration cache, engine build."""

from dgh_deploy.targets.tensorrt.target import TensorRTInt8Target

TARGET = TensorRTInt8Target

__all__ = ["TARGET", "TensorRTInt8Target"]
