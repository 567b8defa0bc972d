"""Arm Ethos-U NPUs (U55, U65, U85): the tflite-int8 file, compiled by Vela, verified on TFLite Micro.

The full-integer .tflite is built exactly as ``tflite-int8`` builds it (this target is that target
with one more step), because Vela compiles such a file: int8 weights with zero point 0, per
channel, and int8 activations and I/O. Vela then places every op it can on the NPU, leaves the
rest to the Cortex-M (TFLite Micro's kernels), and estimates memory and time for a system
configuration. The Vela-compiled file sits beside the plain int8 one; the report gets the op
placement (every op left to the CPU, with Vela's reason), SRAM and flash, cycles, the estimated
time per inference and the MACs.

What the numbers are checked on is the int8 file before Vela, on TFLite Micro's reference
kernels (the CPU side of the device; the NPU is specified to match them) beside LiteRT. No
Ethos-U silicon or simulator runs here: Vela's times are its estimates for the configuration.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import ClassVar

from dgh_deploy.artifacts import atomic_path
from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.reporting.report import Report
from dgh_deploy.targets.base import BuildResult, QuantConstraints, TargetFlag, TargetOptions
from dgh_deploy.targets.ethos_u.report import npu_check, npu_markdown
from dgh_deploy.targets.ethos_u.section import EthosUSection, NpuSection
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
from dgh_deploy.targets.tflite.silu_floor import DEFAULT_FLOOR
from dgh_deploy.targets.tflite.target import PARITY_IMAGES, EarlyConversion, TFLiteInt8Target
from dgh_deploy.verification.gate import GateCheck

log = logging.getLogger("dgh_deploy")


class EthosUTarget(TFLiteInt8Target):
    name: ClassVar[str] = "ethos-u"
    summary: ClassVar[str] = ("Arm Ethos-U NPU (U55/U65/U85): the full-integer INT8 .tflite compiled by Vela, "
                              "with op placement, SRAM, flash and time per inference")
    runtime: ClassVar[str] = ("TFLite Micro reference kernels (tflite-micro) and LiteRT, on the int8 .tflite "
                              "before Vela; NPU figures are Vela's estimates")
    requires: ClassVar[tuple[str, ...]] = (*TFLiteInt8Target.requires, "ethosu", "tflite_micro")
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
    )
    summary_artifacts: ClassVar[tuple[str, ...]] = ("model", "vela_model")
    section: ClassVar[type[EthosUSection]] = EthosUSection

    def summary_lines(self, report: Report) -> list[str]:
        """Where Vela put the ops, and what the NPU costs."""
        npu = _npu(report)
        if npu is None:
            return super().summary_lines(report)
        v = npu.vela
        memory = f"flash {v.flash_kib:.1f} KiB" + (f", DRAM {v.dram_kib:.1f} KiB" if v.dram_kib else "")
        lines = [f"{v.accelerator} ({v.system_config}, {v.memory_mode}): {v.npu_ops} of "
                 f"{v.npu_ops + v.cpu_ops} ops on the NPU, SRAM {v.sram_kib:.1f} KiB, {memory}, "
                 f"{v.inference_ms:.2f} ms per inference (Vela's estimate)"]
        lines += [f"  on the CPU: {op.op} '{op.name}': {op.reason}" for op in v.cpu_fallback]
        return super().summary_lines(report) + lines

    def markdown_lines(self, report: Report) -> list[str]:
        npu = _npu(report)
        return super().markdown_lines(report) + (npu_markdown(npu) if npu else [])

    def gate_checks(self, report: Report) -> list[GateCheck]:
        npu = _npu(report)
        return [npu_check(npu)] if npu and npu.require_npu else []

    def __init__(self, options: TargetOptions | None = None, npu: str = DEFAULT_ACCELERATOR, system_config: str = "",
                 memory_mode: str = "", require_npu: bool = False, silu_floor: float = DEFAULT_FLOOR,
                 parity_images: int = PARITY_IMAGES, int16_layers: str = "") -> None:
        super().__init__(options, silu_floor, parity_images, int16_layers=int16_layers)
        self.vela = VelaSettings(npu, system_config, memory_mode)
        self.require_npu = require_npu

    @property
    def constraints(self) -> QuantConstraints:
        base = super().constraints
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
        super().check_options(model)

    # --- build -----------------------------------------------------------------------------
    def build(self, model: LoadedModel, calib: CalibrationSet, workdir: Path,
              early: EarlyConversion | None = None) -> BuildResult:
        return self.compile_for_npu(super().build(model, calib, workdir, early), Path(workdir))

    def build_from_onnx(self, model: LoadedModel, onnx_path: str | Path, calib: CalibrationSet,
                        workdir: Path) -> BuildResult:
        return self.compile_for_npu(super().build_from_onnx(model, onnx_path, calib, workdir), Path(workdir))

    def compile_for_npu(self, result: BuildResult, workdir: Path) -> BuildResult:
        """Run Vela on the int8 file of ``result``; add its files, placement and estimates."""
        int8 = result.artifacts["model"]
        with tempfile.TemporaryDirectory(prefix="dgh-vela-") as tmp:
            out = compile_model(int8, self.vela, Path(tmp))
            result.artifacts["vela_model"] = install(out.model, workdir / out.model.name)
            result.artifacts["vela_summary"] = install(out.summary, workdir / f"{int8.stem}_vela_summary.csv")
        result.artifacts["vela_log"] = _write(workdir / f"{int8.stem}_vela.log", out.log)
        _log_placement(out.report)
        section = result.info
        assert isinstance(section, EthosUSection)  # tflite-int8's build writes this target's section type
        section.ethos_u = NpuSection(out.report, self.require_npu)
        result.timings["vela"] = out.report.seconds
        return result


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
