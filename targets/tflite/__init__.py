"""Full-integer INT8 TFLite (LiteRT): target, calibrator, onnx2tf converter, full-integer check."""

from dgh_deploy.targets.tflite.target import TFLiteInt8Target

TARGET = TFLiteInt8Target

__all__ = ["TARGET", "TFLiteInt8Target"]
