"""Arm Ethos-U NPUs (U55, U65, U85): the tflite-int8 file, compiled by Vela, verified on TFLite Micro.

The full-integer .tflite is built by ``tflite-int8`` itself (this target holds one, found by name
in the registry, and adds one step), because Vela compiles such a file: int8 weights with zero
point 0, per channel, and int8 activations and I/O. Vela then places every op it can on the NPU,
leaves the rest to the Cortex-M (TFLite Micro's kernels), and estimates memory and time for a
system configuration. The Vela-compiled file sits beside the plain int8 one; the report gets the op
placement (every op left to the CPU, with Vela's reason), SRAM and flash, cycles, the estimated
time per inference and the MACs.

What the numbers are checked on is the int8 file before Vela, on TFLite Micro's reference
kernels (the CPU side of the device; the NPU is specified to match them) beside LiteRT. No
Ethos-U silicon or simulator runs here: Vela's times are its estimates for the configuration.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dgh_deploy.artifacts import atomic_path
from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.calibration.weights.gptq import ROUNDING_HELP, ROUNDINGS
from dgh_deploy.errors import DGHError
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.reporting.report import Report
from dgh_deploy.reporting.section import TargetSection
from dgh_deploy.targets import get_target
from dgh_deploy.targets.base import (
    BIAS_CORRECTION_FLAGS,
    OUTPUT_HEADROOM_HELP,
    BuildResult,
    QuantConstraints,
    Target,
    TargetFlag,
    TargetOptions,
)
from dgh_deploy.targets.ethos_u.report import npu_check, npu_markdown
from dgh_deploy.targets.ethos_u.section import TFLITE_INT8, EthosUSection, NpuSection
from dgh_deploy.targets.ethos_u.vela import (
    ACCELERATORS,
    DEFAULT_ACCELERATOR,
    INSTALL_HINT,
    VelaReport,
    VelaSettings,
    check_settings,
    compile_model,
    install,
    supported_op_count,
    vela_version,
)
from dgh_deploy.tasks.ultralytics_format import LAYOUT_HELP, LAYOUTS
from dgh_deploy.verification.gate import GateCheck
from dgh_deploy.verification.layers import LayerError

log = logging.getLogger("dgh_deploy")


class EthosUTarget(Target):
    """tflite-int8's build, held and asked by name through the registry (no target folder imports
    another), then Vela's step; the report gets tflite-int8's section and lines, then Vela's."""

    name: ClassVar[str] = "ethos-u"
    summary: ClassVar[str] = ("Arm Ethos-U NPU (U55/U65/U85): the full-integer INT8 .tflite compiled by Vela, "
                              "with op placement, SRAM, flash and time per inference")
    runtime: ClassVar[str] = ("TFLite Micro reference kernels (tflite-micro) and LiteRT, on the int8 .tflite "
                              "before Vela; NPU figures are Vela's estimates")
    # tflite-int8's own (its converter's stack is checked by asking it), then Vela's and TFLite Micro's.
    requires: ClassVar[tuple[str, ...]] = ("ai_edge_litert", "ethosu", "tflite_micro")
    install_hint: ClassVar[str] = INSTALL_HINT
    flags: ClassVar[tuple[TargetFlag, ...]] = (
        TargetFlag("--npu", "npu", f"Ethos-U accelerator configuration (default {DEFAULT_ACCELERATOR}; Vela's: "
                                   f"{', '.join(ACCELERATORS)})"),
        TargetFlag("--system-config", "system_config",
                   "Vela system configuration: clocks and buses (default Vela's for the NPU family, e.g. "
                   "Ethos_U55_High_End_Embedded)"),
        TargetFlag("--memory-mode", "memory_mode",
                   "Vela memory mode: where weights and tensors live (default Vela's for the family, e.g. "
                   "Shared_Sram; Sram_Only_512KB: an Ethos-U55 with 512 KiB of SRAM and nothing else)"),
        TargetFlag("--require-npu", "require_npu",
                   "fail the job (exit 3, after writing the report) if Vela leaves any op to the CPU", None),
        TargetFlag("--int16-layers", "int16_layers", metavar="MODULES", help=
                   "keep these PyTorch modules (comma-separated, as report.md's per-layer table names them) at "
                   "int16 activations with int8 weights (TFLite's 16x8 kernels, which Vela and TFLite Micro run), "
                   "the rest int8 (litert-torch)"),
        TargetFlag("--weight-rounding", "weight_rounding", ROUNDING_HELP, choices=ROUNDINGS),
        TargetFlag("--layout", "layout", LAYOUT_HELP, choices=LAYOUTS),  # the tflite-int8 file's; maps or split
        TargetFlag("--output-headroom", "output_headroom", OUTPUT_HEADROOM_HELP, type=float, metavar="X"),
        *BIAS_CORRECTION_FLAGS,
    )
    summary_artifacts: ClassVar[tuple[str, ...]] = ("model", "vela_model")
    section: ClassVar[type[EthosUSection]] = EthosUSection
    repair_flag: ClassVar[str] = "--int16-layers"  # passed on to tflite-int8, whose converter keeps them at int16

    def __init__(self, options: TargetOptions | None = None, npu: str = DEFAULT_ACCELERATOR, system_config: str = "",
                 memory_mode: str = "", require_npu: bool = False, silu_floor: float | None = None,
                 parity_images: int | None = None, int16_layers: str = "", weight_rounding: str = "",
                 layout: str = "", output_headroom: float | None = None, bias_correction: str = "") -> None:
        # What the user left unset is not passed on, so tflite-int8's defaults stay its own.
        given = {"silu_floor": silu_floor, "parity_images": parity_images, "output_headroom": output_headroom}
        self.tflite = get_target(TFLITE_INT8, int16_layers=int16_layers, weight_rounding=weight_rounding,
                                 layout=layout, bias_correction=bias_correction,
                                 **{k: v for k, v in given.items() if v is not None})
        super().__init__(options)
        self.vela = VelaSettings(npu, system_config, memory_mode)
        self.require_npu = require_npu

    # The job sets the options after making the target; the build they steer is tflite-int8's.
    @property
    def options(self) -> TargetOptions:
        return self.tflite.options

    @options.setter
    def options(self, value: TargetOptions) -> None:
        self.tflite.options = value

    @property  # type: ignore[override]  # the build that shows progress is tflite-int8's
    def progress(self) -> bool:
        return self.tflite.progress

    @progress.setter
    def progress(self, value: bool) -> None:
        self.tflite.progress = value

    @property
    def layer_runtime(self) -> str:  # type: ignore[override]  # tflite-int8's: its file is what is diagnosed
        return self.tflite.layer_runtime

    def summary_lines(self, report: Report) -> list[str]:
        """tflite-int8's, then where Vela put the ops, and what the NPU costs."""
        lines = self.tflite.summary_lines(_as_tflite(report))
        npu = _npu(report)
        if npu is None:
            return lines
        v = npu.vela
        memory = f"flash {v.flash_kib:.1f} KiB" + (f", DRAM {v.dram_kib:.1f} KiB" if v.dram_kib else "")
        own = [f"{v.accelerator} ({v.system_config}, {v.memory_mode}): {v.npu_ops} of "
               f"{v.npu_ops + v.cpu_ops} ops on the NPU, SRAM {v.sram_kib:.1f} KiB, {memory}, "
               f"{v.inference_ms:.2f} ms per inference (Vela's estimate)"]
        own += [f"  on the CPU: {op.op} '{op.name}': {op.reason}" for op in v.cpu_fallback]
        return lines + own

    def markdown_lines(self, report: Report) -> list[str]:
        npu = _npu(report)
        return self.tflite.markdown_lines(_as_tflite(report)) + (npu_markdown(npu) if npu else [])

    def gate_checks(self, report: Report) -> list[GateCheck]:
        npu = _npu(report)
        return self.tflite.gate_checks(_as_tflite(report)) + ([npu_check(npu)] if npu and npu.require_npu else [])

    @property
    def constraints(self) -> QuantConstraints:
        base = self.tflite.constraints
        u55, u85 = supported_op_count("EthosU55"), supported_op_count("EthosU85")
        ops = (f"{u55} TFLite ops can run on the Ethos-U55/U65 NPU and {u85} on the U85, each under its "
               "constraints (vela --supported-ops-report); any other op falls back to the CPU"
               if u55 is not None else "Vela is not installed")
        return QuantConstraints(
            weight_bits=8, act_bits=8, weight_granularity=base.weight_granularity, weight_symmetric=True,
            act_symmetric=False, power_of_two=False, io_dtype="int8", all_layers_quantized=True,
            notes=f"Vela {vela_version() or '(not installed)'}: int8 weights, symmetric (zero point 0) per channel; "
                  f"int8 activations, asymmetric per tensor (int16 for the modules --int16-layers names); int8 I/O; "
                  f"{ops}",
        )

    def check_options(self, model: LoadedModel) -> None:
        """tflite-int8's checks (its I/O is int8: --io-dtype is not an ethos-u option), and an NPU, system
        configuration and memory mode Vela knows."""
        check_settings(self.vela)
        if self.tflite.layout == "ultralytics":
            raise DGHError("--layout ultralytics writes a float-I/O file for LiteRT, which Vela does not compile",
                           "use --layout maps (the default) or split, or --target tflite-int8 for that file")
        self.tflite.check_options(model)

    def missing_requirements(self) -> list[str]:
        own = super().missing_requirements()
        return own + [m for m in self.tflite.missing_requirements() if m not in own]

    def install_hint_for(self, missing: list[str]) -> str:
        hint = self.tflite.install_hint_for(missing)
        # tflite-int8 names its converter's own install line when that stack is missing; else ours, which
        # brings Vela and TFLite Micro too.
        return hint if hint != self.tflite.install_hint else self.install_hint

    def repair_in_use(self) -> bool:
        return self.tflite.repair_in_use()

    def layer_errors(self, model: LoadedModel, result: BuildResult, images: np.ndarray) -> list[LayerError] | None:
        return self.tflite.layer_errors(model, _tflite_result(result), images)

    # --- build -----------------------------------------------------------------------------
    def deploy_form(self, model: LoadedModel) -> LoadedModel:
        return self.tflite.deploy_form(model)  # the tflite-int8 file Vela compiles: a detector's ends at its maps

    def preflight(self, model: LoadedModel) -> Any:
        return self.tflite.preflight(model)

    def build(self, model: LoadedModel, calib: CalibrationSet, workdir: Path, early: Any = None) -> BuildResult:
        return self.compile_for_npu(self.tflite.build(model, calib, workdir, early), Path(workdir))

    def build_from_onnx(self, model: LoadedModel, onnx_path: str | Path, calib: CalibrationSet,
                        workdir: Path) -> BuildResult:
        # Not every target builds from an ONNX file (not a Target hook); tflite-int8 does, with onnx2tf.
        built = self.tflite.build_from_onnx(model, onnx_path, calib, workdir)  # type: ignore[attr-defined]
        return self.compile_for_npu(built, Path(workdir))

    def compile_for_npu(self, result: BuildResult, workdir: Path) -> BuildResult:
        """Run Vela on the int8 file of ``result``; add its files, placement and estimates."""
        int8 = result.artifacts["model"]
        with tempfile.TemporaryDirectory(prefix="dgh-vela-") as tmp:
            out = compile_model(int8, self.vela, Path(tmp))
            result.artifacts["vela_model"] = install(out.model, workdir / out.model.name)
            result.artifacts["vela_summary"] = install(out.summary, workdir / f"{int8.stem}_vela_summary.csv")
        result.artifacts["vela_log"] = _write(workdir / f"{int8.stem}_vela.log", out.log)
        _log_placement(out.report)
        assert isinstance(result.info, TargetSection)  # tflite-int8's build writes its typed section
        result.info = EthosUSection(result.info, NpuSection(out.report, self.require_npu))
        result.timings["vela"] = out.report.seconds
        return result


def _as_tflite(report: Report) -> Report:
    """``report`` as tflite-int8 reads it: with its own section where ours holds it, so that target
    need not know this one exists."""
    section = report.target.facts
    if not isinstance(section, EthosUSection):
        return report
    return dataclasses.replace(report, target=dataclasses.replace(report.target, facts=section.tflite))


def _tflite_result(result: BuildResult) -> BuildResult:
    """``result`` with tflite-int8's own section, as its build returned it."""
    section = result.info
    return dataclasses.replace(result, info=section.tflite) if isinstance(section, EthosUSection) else result


def _npu(report: Report) -> NpuSection | None:
    """Vela's compilation in the report, where an ethos-u build wrote it."""
    section = report.target.facts
    return section.ethos_u if isinstance(section, EthosUSection) else None


def _log_placement(report: VelaReport) -> None:
    log.info("Vela %s for %s (%s, %s): %d of %d ops on the NPU, SRAM %.1f KiB, flash %.1f KiB, %.2f ms estimated",
             report.vela_version, report.accelerator, report.system_config, report.memory_mode, report.npu_ops,
             report.npu_ops + report.cpu_ops, report.sram_kib, report.flash_kib, report.inference_ms)
    for op in report.cpu_fallback:
        log.warning("Vela leaves %s '%s' to the CPU: %s", op.op, op.name, op.reason)
    if report.fits_sram is False:
        log.warning("the model needs %.1f KiB of SRAM; memory mode %s has %.0f KiB", report.sram_kib,
                    report.memory_mode, report.sram_capacity_kib)


def _write(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
