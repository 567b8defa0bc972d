"""Arm Ethos-U NPUs: the tflite-int8 file compiled by Vela (placement, SRAM, flash, time), verified on TFLite Micro."""

from dgh_deploy.targets.ethos_u.target import EthosUTarget

TARGET = EthosUTarget

__all__ = ["TARGET", "EthosUTarget"]
