"""What every target shares: the target interface, its constraints and options, the calibrator interface.

As in torch.ao's PT2E quantizers, the target declares what the hardware can run
(:class:`QuantConstraints`); the converter and runtime apply it. Every target calibrates through a
:class:`Calibrator`, which observes the calibration set batch by batch and yields what that
target's converter needs (ranges, or the converter's representative dataset). The shared pipeline
(:mod:`dgh_deploy.pipeline`) then verifies whatever :meth:`Target.build` returns, the same way
for every target.
"""

from __future__ import annotations

import importlib.util
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

import numpy as np

from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.calibration.observers import check_percentile
from dgh_deploy.errors import DGHError
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.reporting.report import Report
from dgh_deploy.reporting.section import Facts, TargetSection
from dgh_deploy.runtime.base import Runner
from dgh_deploy.verification.gate import GateCheck
from dgh_deploy.verification.layers import LayerError

DEFAULT_PERCENTILE = 99.99  # of |x| (TensorRT) or of x's two tails (sim, TFLite), when no target picks another


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
    weight_bits: int = 8
    act_bits: int = 8
    weight_symmetric: bool = True
    act_range: str = ""  # "" = the target's default; minmax | mse | percentile | entropy
    percentile: float | None = None  # None = the target's default (see percentile_or)
    threads: int = 2
    parity_atol: float = 0.0  # 0 = the target's default tolerance
    device: str = "cpu"

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
        check_percentile(self.percentile)


@dataclass(frozen=True)
class TargetFlag:
    """A command-line option only one target reads; its value reaches the target's constructor as ``dest``.

    The CLI adds every target's flags in a group of its own and refuses a flag given for another
    target, so ``--target X --flag-of-Y`` fails in the first second instead of being ignored.
    """

    flag: str  # e.g. "--npu"
    dest: str  # the target constructor's keyword
    help: str
    type: Callable[[str], Any] | None = str  # None: a switch, ``switched`` when present
    choices: tuple[str, ...] = ()
    switched: Any = True  # a switch's value when given (False for a --no-... switch)
    metavar: str | None = None  # what --help shows for the value (argparse's default: the dest in capitals)


OUTPUT_HEADROOM_HELP = ("the int8 outputs' range reaches this many times above the largest value the calibration "
                        "images give (>= 1; default: the task's, 1.5 for classifiers' logits, 1 for detectors)")


BIAS_CORRECTIONS = ("on", "off")
BIAS_CORRECTION_HELP = ("correct each layer's bias for the mean output shift quantization causes, measured on the "
                        "calibration set (on | off). sim: the shift weight rounding causes (default on); tflite-int8, "
                        "ethos-u: the int8 file's against the float file, on LiteRT (default on for classifiers, "
                        "off for detectors)")


BIAS_CORRECTION_FLAGS: tuple[TargetFlag, ...] = (  # one concept, one flag, on every target that corrects biases
    TargetFlag("--bias-correction", "bias_correction", BIAS_CORRECTION_HELP, choices=BIAS_CORRECTIONS),
    TargetFlag("--no-bias-correction", "bias_correction", "the same as --bias-correction off", None, switched="off"),
)


def checked_bias_correction(given: str | bool) -> str:
    """``--bias-correction`` (on / off; a bool from the Python API), checked: "" leaves it to the target."""
    value = {True: "on", False: "off"}.get(given, given) if isinstance(given, bool) else given
    if value not in ("", *BIAS_CORRECTIONS):
        raise DGHError(f"--bias-correction '{given}' is neither on nor off", "pass --bias-correction on or off")
    return value


def checked_headroom(given: float | None) -> float | None:
    """``--output-headroom``, checked: None leaves it to the task (``TaskAdapter.output_headroom``)."""
    if given is not None and not (math.isfinite(given) and given >= 1.0):
        raise DGHError(f"--output-headroom {given:g} is below 1 (it would clip the outputs inside the calibration "
                       "set's own range)", "pass 1 (the set's range) or more, or leave it to the task")
    return given


ADVICE_DROP = 1.0  # a metric drop (points) worth a rebuild with the noisiest modules at a higher precision


@dataclass
class BuildResult:
    """What a target produced, and how to run it for verification."""

    artifacts: dict[str, Path]  # role -> file inside the working folder ("model", "cache", ...)
    runner: Runner  # the quantized model on the target's runtime (or its closest CPU stand-in)
    info: TargetSection | Facts = field(default_factory=dict)  # the target's own section of report.json
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds


class Target(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]
    runtime: ClassVar[str]  # what the verification runs on
    requires: ClassVar[tuple[str, ...]] = ()  # Python modules the build needs
    install_hint: ClassVar[str] = ""
    flags: ClassVar[tuple[TargetFlag, ...]] = ()  # this target's own CLI options
    summary_artifacts: ClassVar[tuple[str, ...]] = ("model",)  # the files the CLI's last lines name
    # The type of its report.json section (what build puts in BuildResult.info), for reading a report
    # back; None: the section is a plain dict.
    section: ClassVar[type[TargetSection] | None] = None
    progress: bool = True  # progress bars for a build's long steps (the job sets it; the CLI's --quiet clears it)

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

    # --- what the target adds to the report, the gate and the console -------------------------
    # Each reads the target's own section (``report.target.facts``, what its build put in
    # BuildResult.info, of type ``section``): the shared reporting names no target, and a new target
    # touches only its folder.
    def summary_lines(self, report: Report) -> list[str]:
        """What this target adds to the CLI's closing lines."""
        return []

    def markdown_lines(self, report: Report) -> list[str]:
        """This target's section of report.md (Markdown lines)."""
        return []

    def gate_checks(self, report: Report) -> list[GateCheck]:
        """The pass/fail checks this target's options asked for (``--max-drop`` is the job's own)."""
        return []

    @classmethod
    def report_schema(cls) -> dict[str, Any]:
        """JSON-schema properties of the keys this target adds to report.json's ``target`` object: its
        section type's, so the schema and the typed section are declared in one place."""
        return cls.section.json_schema() if cls.section is not None else {}

    # --- where the quantized model loses accuracy -----------------------------------------------
    layer_runtime: ClassVar[str] = ""  # what runs both models for layer_errors(), every tensor visible
    repair_flag: ClassVar[str] = ""  # the flag that keeps chosen modules at a higher precision (one of flags)

    def repair_in_use(self) -> bool:
        """Whether this job already keeps modules at a higher precision (then no advice is given)."""
        return False

    def repair_advice(self, drop: float | None, noisiest: list[str]) -> str | None:
        """Where the metric dropped more than :data:`ADVICE_DROP` points, the flag to try with the modules
        the per-layer diagnosis found adding the most noise."""
        own = self.repair_flag in {f.flag for f in self.flags}  # advice names only a flag the CLI lets this target take
        if not own or drop is None or drop <= ADVICE_DROP or not noisiest or self.repair_in_use():
            return None
        return (f"the drop ({drop:.2f}) is over {ADVICE_DROP:g}: keep the modules adding the most noise at a "
                f"higher precision with {self.repair_flag} {','.join(noisiest)}")

    def layer_errors(self, model: LoadedModel, result: BuildResult, images: np.ndarray) -> list[LayerError] | None:
        """Each tensor of the built model against the float model on ``images`` (model input space,
        NCHW), in execution order, for the report's per-layer diagnosis; None where the target cannot
        see inside its model."""
        return None

    def missing_requirements(self) -> list[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def install_hint_for(self, missing: list[str]) -> str:
        """The install line for the ``missing`` modules (a target with alternative stacks names the right one)."""
        return self.install_hint

    def deploy_form(self, model: LoadedModel) -> LoadedModel:
        """``model`` as this target deploys it (a detector's output layout), after :meth:`check_options`
        accepted it: what generation, the build and every check of the job then see. Itself by default."""
        return model

    def preflight(self, model: LoadedModel) -> Any:
        """Checks that need the model converted (float), run by the job before generating; raise
        :class:`~dgh_deploy.errors.DGHError` for a model the target cannot build. Returns what
        :meth:`build` may reuse (the job hands it over as ``early``); nothing by default."""
        return None

    @abstractmethod
    def build(self, model: LoadedModel, calib: CalibrationSet, workdir: Path, early: Any = None) -> BuildResult:
        """Calibrate with ``calib``, convert ``model``, run the target's structural checks
        (float parity, integer-only ops...), and write artifacts under ``workdir``. ``early`` is
        :meth:`preflight`'s result for this model, or None. Raise
        :class:`~dgh_deploy.errors.DGHError` for anything the user must fix."""


Layout = Literal["NCHW", "NHWC"]
CalibrationResult = TypeVar("CalibrationResult")


class Calibrator(ABC, Generic[CalibrationResult]):
    """Observes a calibration set and yields what one target's converter consumes.

    Every target calibrates through :meth:`calibrate`, the same way: the set is checked once,
    then fed batch by batch in the converter's ``layout``, ``passes`` times (a calibrator that
    needs the ranges before it can histogram, or quantized ranges before it can round weights,
    looks twice or more; :meth:`begin_pass` tells it which look this is), and :meth:`result`
    turns what it saw into ranges or into the converter's input. No calibrator keeps a batch
    past :meth:`observe` unless its converter needs the whole set (TFLite's representative data).
    """

    layout: ClassVar[Layout] = "NCHW"

    def __init__(self, batch_size: int = 1, passes: int = 1) -> None:
        self.batch_size = batch_size
        self.passes = passes

    def calibrate(self, calib: CalibrationSet) -> CalibrationResult:
        self.check(calib)
        for index in range(self.passes):
            self.begin_pass(index)
            for batch in calib.batches(self.batch_size, self.layout):
                self.observe(batch)
        return self.result()

    def check(self, calib: CalibrationSet) -> None:
        """Refuse a set no converter should calibrate on; subclasses add their converter's needs."""
        if not np.isfinite(calib.images).all():
            raise DGHError(
                "calibration images hold NaN or Inf values",
                "regenerate the calibration set (a diverged generation writes non-finite pixels)",
            )

    def begin_pass(self, index: int) -> None:
        """Called before each look at the set (``index`` from 0 to ``passes - 1``)."""

    @abstractmethod
    def observe(self, batch: np.ndarray) -> None:
        """See one batch (``layout``, float32, the model's input space)."""

    @abstractmethod
    def result(self) -> CalibrationResult:
        """What the converter consumes, from everything observed."""
