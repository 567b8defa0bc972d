"""The converter interface of tflite-int8: PyTorch -> float .tflite -> full-integer .tflite.

Two stacks implement it, and they cannot share a venv (onnx2tf pins TensorFlow 2.19 and
ai-edge-litert 2.1; litert-torch and ai-edge-quantizer need ai-edge-litert 2.3 and no
TensorFlow): :mod:`.onnx2tf_converter` (PyTorch -> ONNX -> onnx2tf, TensorFlow's quantizer) and
:mod:`.litert_converter` (litert-torch, then ai-edge-quantizer). The target does everything else
the same way for both: the same calibration set, the same float-parity check against PyTorch
and integer-only check, verified on LiteRT. Both write NHWC input and channel-last feature-map
outputs, so one runner reads either file.

The float conversion is its own step so that the job can run it, and check it, before minutes
of generation: a model the converter mis-converts is refused in seconds.
"""

from __future__ import annotations

import importlib.util
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

from dgh_deploy.errors import DGHError
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.targets.base import Calibrator

ONNX2TF = "onnx2tf"
LITERT_TORCH = "litert-torch"
# The default first: litert-torch, chosen by bench/converters.py (docs/design.md, "Why litert-torch
# is the default").
CONVERTERS = (LITERT_TORCH, ONNX2TF)
DEFAULT_CONVERTER = CONVERTERS[0]
ACT_RANGES = ("minmax", "percentile", "mse")


@dataclass(frozen=True)
class ConversionSettings:
    """What the int8 file must be: the target's options, as every converter reads them."""

    per_tensor: bool = False  # per-tensor weights instead of per-channel
    io_dtype: str = "int8"  # int8 | uint8 (int16 with 16-bit activations)
    act_bits: int = 8  # 16: int16 activations, int8 weights (TFLite's 16x8 mode)
    act_range: str = "minmax"  # one of ACT_RANGES, per tensor from the calibration set
    percentile: float = 99.99
    verbose: bool = False
    threads: int = 2
    int16_layers: tuple[str, ...] = ()  # PyTorch modules whose ops take int16 activations (16x8), the rest int8
    output_headroom: float = 1.0  # the task's (TaskAdapter.output_headroom): the outputs' range tops times this

    @property
    def quant_type(self) -> str:
        return "per-tensor" if self.per_tensor else "per-channel"


@dataclass
class FloatModel:
    """A float .tflite of the module, and how to name the layer where it goes wrong."""

    path: Path
    seconds: float
    diagnose: Callable[[np.ndarray], str | None] | None = None  # one NCHW image -> first diverging layer
    source: Path | None = None  # the ONNX file it came from, when the converter goes through ONNX


@dataclass
class Conversion:
    """The files the target checks and ships, and what the report says about the conversion."""

    float_model: Path
    int8_model: Path
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    diagnose: Callable[[np.ndarray], str | None] | None = None
    sources: dict[str, Path] = field(default_factory=dict)  # role -> intermediate file worth shipping (the ONNX)


class Converter(ABC):
    """One converter stack. Heavy imports happen inside the methods, never at import time."""

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]]  # Python modules of its stack
    install_hint: ClassVar[str]
    act_ranges: ClassVar[tuple[str, ...]] = ("minmax",)  # range methods it can apply
    act_bits: ClassVar[tuple[int, ...]] = (8,)
    io_dtypes: ClassVar[tuple[str, ...]] = ("int8", "uint8")
    mixed_precision: ClassVar[bool] = False  # can keep chosen layers at int16 activations (--int16-layers)
    # The fix a float-parity failure gets: what to do when this converter computes something else.
    parity_fix: ClassVar[str] = ("rewrite that layer into an equivalent converter-friendly form (a model export_form), "
                                 "or report the op to the converter")

    def __init__(self, settings: ConversionSettings | None = None) -> None:
        self.settings = settings or ConversionSettings()

    def missing_requirements(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def check_settings(self) -> None:
        """Refuse settings this converter cannot honour, naming the converter that can."""
        s, other = self.settings, f"--converter {self.other()}"
        if s.act_range not in self.act_ranges:
            methods = " / ".join("min/max" if r == "minmax" else r for r in self.act_ranges)
            raise DGHError(f"--converter {self.name} calibrates activation ranges by {methods} only, "
                           f"not '{s.act_range}'",
                           f"drop --act-range, or use {other}")
        if s.act_bits not in self.act_bits:
            raise DGHError(f"--converter {self.name} has no {s.act_bits}-bit activations",
                           f"drop --act-bits, or use {other}")
        if s.int16_layers and not self.mixed_precision:
            raise DGHError(f"--converter {self.name} cannot keep single layers at int16 (--int16-layers)",
                           f"drop --int16-layers, or use {other}")
        if s.int16_layers and s.act_bits != 8:
            raise DGHError("--int16-layers keeps some layers of an int8 model at int16; every activation is "
                           f"{s.act_bits}-bit already", "drop --int16-layers or --bits")
        if s.act_bits == 8 and s.io_dtype not in self.io_dtypes:  # 16-bit activations come with int16 I/O
            raise DGHError(f"--converter {self.name} writes no '{s.io_dtype}' I/O "
                           f"(it writes {' or '.join(self.io_dtypes)})",
                           f"use --io-dtype {self.io_dtypes[0]}, or {other}")

    def other(self) -> str:
        return next(c for c in CONVERTERS if c != self.name)

    @abstractmethod
    def convert_float(self, model: LoadedModel, module: nn.Module, scratch: Path) -> FloatModel:
        """``module`` (``model``'s export form) as a float .tflite under ``scratch``."""

    @abstractmethod
    def calibrator(self, model: LoadedModel, scratch: Path, float_model: FloatModel) -> Calibrator[Any]:
        """The calibrator that turns the calibration set into what :meth:`quantize` takes."""

    @abstractmethod
    def quantize(self, model: LoadedModel, module: nn.Module, float_model: FloatModel, data: Any,
                 scratch: Path) -> Conversion:
        """The full-integer file from the calibrator's result ``data``; ``float_model`` is
        :meth:`convert_float`'s file for the same module, which a converter that quantizes a
        float file reuses and one that converts again ignores."""


def file_stem(name: str) -> str:
    """A model name as a file name (factory models are named 'file:func')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"

