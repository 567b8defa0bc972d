"""The target interface: a target states its hardware's constraints and builds an artifact.

As in torch.ao's PT2E quantizers, the target declares what the hardware can run
(:class:`QuantConstraints`); the converter and runtime apply it. The shared pipeline
(:mod:`dgh_deploy.pipeline`) then verifies whatever :meth:`Target.build` returns, the same way
for every target.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.errors import DGHError
from dgh_deploy.loading import LoadedModel
from dgh_deploy.runtime.base import Runner

DEFAULT_PERCENTILE = 99.99  # of |x| (TensorRT) or of x's two tails (sim), when no target picks another


@dataclass(frozen=True)
class QuantConstraints:
    """What the hardware runs. Bits are integer widths; granularity is per tensor or channel."""

    weight_bits: int = 8
    act_bits: int = 8
    weight_granularity: str = "per-channel"  # or "per-tensor"
    weight_symmetric: bool = True
    act_symmetric: bool = False
    power_of_two: bool = False
    io_dtype: str = "int8"  # integer I/O of the artifact, or "float32"
    all_layers_quantized: bool = True  # hardware-friendly: first/last layers and output too
    notes: str = ""

    def describe(self) -> str:
        w = f"W{self.weight_bits} {'sym' if self.weight_symmetric else 'asym'} {self.weight_granularity}"
        a = f"A{self.act_bits} {'sym' if self.act_symmetric else 'asym'} per-tensor"
        parts = [w, a, f"I/O {self.io_dtype}"]
        if self.power_of_two:
            parts.append("power-of-two scales")
        if self.all_layers_quantized:
            parts.append("all layers")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TargetOptions:
    """User choices a target may honour; each target ignores what does not apply to it."""

    per_tensor: bool = False  # per-tensor weights instead of per-channel
    io_dtype: str = "int8"  # int8 | uint8 (tflite)
    allow_float_ops: bool = False
    weight_bits: int = 8
    act_bits: int = 8
    act_symmetric: bool = False
    weight_symmetric: bool = True
    power_of_two: bool = False
    act_range: str = ""  # "" = the target's default; minmax | mse | percentile | entropy
    percentile: float | None = None  # None = the target's default (see percentile_or)
    # Empirical bias correction (sim): subtract the mean shift that weight rounding causes, measured
    # on the calibration set. MCT's PTQ default; the real runtimes calibrate ranges only.
    bias_correction: bool = True
    weight_rounding: str = ""  # "" = the target's default; gptq | nearest (sim)
    threads: int = 2
    parity_atol: float = 0.0  # 0 = the target's default tolerance
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    def percentile_or(self, default: float = DEFAULT_PERCENTILE) -> float:
        """The user's ``--percentile``, else the target's default for this model."""
        return default if self.percentile is None else self.percentile

    def check_percentile(self, method: str) -> None:
        """Refuse a ``--percentile`` the range method would ignore, or one no range can be read at."""
        if self.percentile is None:
            return
        if method != "percentile":
            raise DGHError(f"--percentile {self.percentile:g} has no effect: activation ranges are by {method} here",
                           "add --act-range percentile, or drop --percentile")
        if not 50.0 < self.percentile <= 100.0:
            raise DGHError(f"--percentile {self.percentile:g} is outside (50, 100]",
                           "pass the share of values the range keeps, e.g. --percentile 99.99")


@dataclass
class BuildResult:
    """What a target produced, and how to run it for verification."""

    artifacts: dict[str, Path]  # role -> file inside the working folder ("model", "cache", ...)
    runner: Runner  # the quantized model on the target's runtime (or its closest CPU stand-in)
    info: dict[str, Any] = field(default_factory=dict)  # target-specific facts for report.json
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds


class Target(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    runtime: ClassVar[str]  # what the verification runs on
    requires: ClassVar[tuple[str, ...]] = ()  # Python modules the build needs
    install_hint: ClassVar[str] = ""

    def __init__(self, options: TargetOptions | None = None) -> None:
        self.options = options or TargetOptions()

    @property
    @abstractmethod
    def constraints(self) -> QuantConstraints:
        """The hardware constraints under the current options."""

    @abstractmethod
    def check_options(self, model: LoadedModel) -> None:
        """Raise :class:`~dgh_deploy.errors.DGHError` for options this target cannot honour on
        ``model``. The job calls it before generating, so a typo costs seconds, not minutes."""

    def missing_requirements(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    @abstractmethod
    def build(self, model: LoadedModel, calib: CalibrationSet, workdir: Path) -> BuildResult:
        """Calibrate with ``calib``, convert ``model``, run the target's structural checks
        (float parity, integer-only ops...), and write artifacts under ``workdir``. Raise
        :class:`~dgh_deploy.errors.DGHError` for anything the user must fix."""
