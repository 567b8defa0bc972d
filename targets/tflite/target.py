"""Full-integer INT8 TFLite for LiteRT and TFLite-delegate NPUs (Edge TPU, Ethos-U, i.MX), via onnx2tf.

PyTorch -> ONNX (with the model's export rewrites) -> onnx2tf (TensorFlow's converter quantizes
with our calibration images) -> two files: ``*_float32.tflite`` and ``*_full_integer_quant.tflite``.
Nothing is handed back until the float file agrees with PyTorch (so that any later accuracy loss
is quantization, not conversion) and the int8 file is shown to run integer-only with integer I/O.

One export rewrite is made for int8's sake: SiLU gets a floor on its input (:mod:`.silu_floor`),
which narrows the int8 range of every conv output that feeds a SiLU. It moves the float outputs
by far less than an int8 step; it is measured on the calibration images against the original
model and dropped if it moves them more than :data:`REWRITE_RTOL` of their scale.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

from dgh_deploy.artifacts import atomic_path
from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.errors import DGHError
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.onnx_export import INPUT_NAME, export_onnx
from dgh_deploy.runtime.base import Runner, TorchRunner
from dgh_deploy.runtime.litert_runner import LiteRTRunner
from dgh_deploy.targets.base import BuildResult, QuantConstraints, Target, TargetFlag, TargetOptions
from dgh_deploy.targets.tflite.calibrator import RepresentativeData, TFLiteCalibrator
from dgh_deploy.targets.tflite.divergence import first_divergence
from dgh_deploy.targets.tflite.integer_ops import check_full_integer
from dgh_deploy.targets.tflite.onnx2tf_converter import Conversion, onnx2tf_version
from dgh_deploy.targets.tflite.silu_floor import DEFAULT_FLOOR, floor_silu
from dgh_deploy.tasks.ultralytics_format import LAYOUT_HELP, LAYOUTS, check_layout
from dgh_deploy.verification.parity import ParityResult, check_float_parity, compare_outputs

log = logging.getLogger("dgh_deploy")

IDENTITY_IMAGES = 4  # the Ultralytics file against the split one: any rewiring shows on every image
PARITY_IMAGES = 32  # enough to see a broken layer (a wrong one moves every logit), cheap at batch 1
# An export rewrite may move each output by this much of its scale (max |output|): under half an
# int8 step (1/255 of the range), so the quantized model cannot tell.
REWRITE_RTOL = 2e-3


@dataclass
class StructuralChecks:
    parity: ParityResult
    float_ops: list[dict[str, Any]]
    output_shapes: list[tuple[int, ...]]
    timings: dict[str, float]


class TFLiteInt8Target(Target):
    name: ClassVar[str] = "tflite-int8"
    summary: ClassVar[str] = "full-integer INT8 .tflite (int8/uint8 I/O) via onnx2tf, verified on LiteRT"
    runtime: ClassVar[str] = "LiteRT interpreter (ai_edge_litert), and TFLite Micro's reference kernels (tflite-micro)"
    requires: ClassVar[tuple[str, ...]] = ("onnx2tf", "tensorflow", "ai_edge_litert")
    install_hint: ClassVar[str] = "pip install 'dgh-deploy[tflite]'"
    # A target flag (tensorrt-int8 declares the same), not a shared option: the CLI then refuses
    # --layout in the first second for a target that writes no such file, instead of ignoring it.
    flags: ClassVar[tuple[TargetFlag, ...]] = (TargetFlag("--layout", "layout", LAYOUT_HELP, choices=LAYOUTS),)

    @property
    def constraints(self) -> QuantConstraints:
        o = self.options
        return QuantConstraints(
            weight_bits=8, act_bits=8,
            weight_granularity="per-tensor" if o.per_tensor else "per-channel",
            weight_symmetric=True, act_symmetric=False, power_of_two=False,
            io_dtype=o.io_dtype, all_layers_quantized=True,
            notes="TFLite int8 spec: weights int8 [-127, 127] zero point 0, int32 bias, activations int8 "
                  "asymmetric per-tensor; min/max ranges from TFLiteConverter's calibration",
        )

    def summary_lines(self, report: dict[str, Any]) -> list[str]:
        """With --layout ultralytics and --val-data: Ultralytics' validator and ours on the same file."""
        from dgh_deploy.verification.ultralytics_val import summary_lines

        return summary_lines(report)

    def __init__(self, options: TargetOptions | None = None, silu_floor: float = DEFAULT_FLOOR,
                 parity_images: int = PARITY_IMAGES, layout: str = "split") -> None:
        super().__init__(options)
        self.layout = layout  # split | ultralytics (detectors): see LAYOUT_HELP
        self.silu_floor = silu_floor  # 0 turns the SiLU-floor export rewrite off
        self.parity_images = parity_images  # calibration images the float conversion is checked on

    # --- build -----------------------------------------------------------------------------
    def build(self, model: LoadedModel, calib: CalibrationSet, workdir: Path) -> BuildResult:
        self.check_options(model)
        with tempfile.TemporaryDirectory(prefix="dgh-tflite-") as tmp:
            scratch = Path(tmp)
            calibrator = self._calibrator(model, scratch)
            calibrator.check(calib)  # before the slow export and conversion
            t0 = time.perf_counter()
            module, rewrites = self.export_module(model, calib)
            onnx_path = export_onnx(model, scratch / f"{file_stem(model.name)}.onnx", module=module)
            export_s = time.perf_counter() - t0
            reference = module if rewrites.get("silu_floor") else None
            data = calibrator.calibrate(calib)
            result = self._convert_and_check(model, onnx_path, calib, data, Path(workdir), scratch, reference)
        result.timings = {"export": export_s, **result.timings}
        result.info["export_rewrites"] = rewrites
        return result

    def export_module(self, model: LoadedModel, calib: CalibrationSet) -> tuple[nn.Module, dict[str, Any]]:
        """The module to export: the model's export form, with floored SiLUs when that is harmless."""
        module = model.for_export()
        if self.silu_floor <= 0:
            return module, {"silu_floor": None, "reason": "turned off (silu_floor = 0)"}
        rewritten = copy.deepcopy(module)
        count = floor_silu(rewritten, self.silu_floor)
        if count == 0:
            return module, {"silu_floor": None, "reason": "the model has no nn.SiLU"}
        images = calib.images[: self.parity_images]
        dev = compare_outputs(TorchRunner(model.module).infer_all(images), TorchRunner(rewritten).infer_all(images),
                              rtol=REWRITE_RTOL)
        info: dict[str, Any] = {"silu_floor": self.silu_floor, "silu_layers": count,
                                "max_abs_deviation": dev.max_abs_error, "tolerance": dev.tolerance,
                                "images": dev.images}
        if not dev.passed:
            log.warning("not flooring SiLU inputs for int8: it would move the outputs too much (%s)", dev.describe())
            return module, {**info, "silu_floor": None, "reason": f"moves the outputs too much: {dev.describe()}"}
        return rewritten, info

    def build_from_onnx(self, model: LoadedModel, onnx_path: str | Path, calib: CalibrationSet,
                        workdir: Path) -> BuildResult:
        """Like :meth:`build`, from an ONNX file already exported (input ``images``, outputs ``output0``...).

        ``model`` is still the PyTorch reference the float conversion is checked against.
        """
        self.check_options(model)
        with tempfile.TemporaryDirectory(prefix="dgh-tflite-") as tmp:
            data = self._calibrator(model, Path(tmp)).calibrate(calib)
            src = Path(tmp) / f"{file_stem(model.name)}.onnx"
            shutil.copyfile(onnx_path, src)
            return self._convert_and_check(model, src, calib, data, Path(workdir), Path(tmp))

    def _calibrator(self, model: LoadedModel, scratch: Path) -> TFLiteCalibrator:
        return TFLiteCalibrator(scratch / "calibration_nhwc.npy", model.imgsz, INPUT_NAME)

    def _convert_and_check(self, model: LoadedModel, onnx_path: Path, calib: CalibrationSet,
                           data: RepresentativeData, workdir: Path, scratch: Path,
                           reference: nn.Module | None = None) -> BuildResult:
        """Convert with ``data`` (``calib`` as the converter reads it), then check the float file
        against ``reference`` (the module the ONNX came from, if not ``model.module``)."""
        from dgh_deploy.targets.tflite.onnx2tf_converter import ConversionSettings, convert

        o = self.options
        settings = ConversionSettings(quant_type="per-tensor" if o.per_tensor else "per-channel",
                                      io_dtype=o.io_dtype, verbose=log.isEnabledFor(logging.DEBUG),
                                      threads=o.threads)
        log.info("converting with onnx2tf (%s weights, %s I/O, %d calibration images)",
                 settings.quant_type, o.io_dtype, len(calib))
        conv = convert(onnx_path, scratch, data, settings)
        checks = self._check(model, conv, calib, onnx_path, reference)
        # Only now do files reach the working folder: nothing there ever failed a check.
        stem = onnx_path.stem
        artifacts = {
            "model": _install(conv.int8_model, workdir / f"{stem}_full_integer_quant.tflite"),
            "float_model": _install(conv.float_model, workdir / f"{stem}_float32.tflite"),
            "onnx": _install(onnx_path, workdir / f"{stem}.onnx"),
        }
        runner: Runner = LiteRTRunner(artifacts["model"], o.threads, checks.output_shapes)
        extra: dict[str, Any] = {}
        if self.layout == "ultralytics":  # a file for LiteRT: its MCU twin is the split file beside it
            runner, extra = self._ultralytics_file(model, artifacts, calib)
            micro: dict[str, Any] = {"skipped": "--layout ultralytics (float I/O, for LiteRT); the split int8 file "
                                                "beside it is the one for TFLite Micro"}
        else:
            runner.device_runner, micro = micro_runner(artifacts["model"], checks.output_shapes)
        info: dict[str, Any] = {
            "float_parity": {**checks.parity.as_dict(), "inputs": "calibration images",
                             "reference": "PyTorch float32" + (" (as exported)" if reference is not None else "")},
            "float_ops": checks.float_ops,
            "io": runner.io_details(),
            "quant_type": settings.quant_type,
            "calibration_images": len(calib),
            "onnx2tf_version": onnx2tf_version(),
            "onnxsim": conv.onnxsim,
            "tflite_micro": micro,
            "layout": self.layout,
            **extra,
        }
        timings = {"conversion": conv.seconds, **checks.timings}
        return BuildResult(artifacts=artifacts, runner=runner, info=info, timings=timings)

    def _check(self, model: LoadedModel, conv: Conversion, calib: CalibrationSet, onnx_path: Path,
               reference: nn.Module | None) -> StructuralChecks:
        """The float file agrees with PyTorch, and the int8 file is integer-only with integer I/O."""
        o = self.options
        t0 = time.perf_counter()
        shapes = output_shapes(model)
        parity = check_float_parity(
            LiteRTRunner(conv.float_model, o.threads, shapes), TorchRunner(reference or model.module),
            calib.images[: self.parity_images], classify=model.task == "classify", atol=o.parity_atol,
            diagnose=lambda x: _first_divergence(onnx_path, conv.float_model, x),
        )
        parity_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        float_ops = check_full_integer(conv.int8_model, o.io_dtype, o.allow_float_ops)
        timings = {"parity": parity_s, "integer_check": time.perf_counter() - t0}
        return StructuralChecks(parity, float_ops, shapes, timings)

    def check_options(self, model: LoadedModel) -> None:
        """Refuse what a TFLite int8 model cannot be, rather than silently building something else."""
        o = self.options
        if o.io_dtype not in ("int8", "uint8"):
            raise DGHError(f"tflite-int8 has no '{o.io_dtype}' I/O", "use --io-dtype int8 or uint8")
        if o.weight_bits != 8 or o.act_bits != 8:
            raise DGHError(
                f"tflite-int8 quantizes to 8 bits, not W{o.weight_bits}A{o.act_bits}",
                "drop the bit-width options for this target",
            )
        if o.power_of_two or o.act_symmetric or not o.weight_symmetric:
            raise DGHError(
                "tflite-int8 follows the TFLite int8 spec (symmetric weights, asymmetric activations, "
                "free-form scales)",
                "drop --power-of-two / symmetric-activation / asymmetric-weight options for this target",
            )
        if o.act_range not in ("", "minmax"):
            raise DGHError(
                f"tflite-int8 calibrates activation ranges by min/max only, not '{o.act_range}'",
                "drop --act-range for this target",
            )
        o.check_percentile("min/max")
        check_layout(self.layout, model, self.name)

    def _ultralytics_file(self, model: LoadedModel, artifacts: dict[str, Path],
                          calib: CalibrationSet) -> tuple[Runner, dict[str, Any]]:
        """--layout ultralytics: the checked int8 file rewrapped as 'model', the split one kept beside it."""
        from dgh_deploy.targets.tflite.ultralytics_file import ultralytics_artifact

        split = artifacts["split_model"] = artifacts["model"]
        path = split.with_name(split.name.replace("_full_integer_quant", "_ultralytics_int8"))
        runner, info = ultralytics_artifact(model, split, output_shapes(model), path,
                                            calib.images[:IDENTITY_IMAGES], self.options.threads)
        artifacts["model"] = path
        return runner, {"ultralytics": info}


def _first_divergence(onnx_path: Path, tflite_path: Path, x: np.ndarray) -> str | None:
    div = first_divergence(onnx_path, tflite_path, x)
    return div.describe() if div is not None else None


def micro_runner(path: Path, shapes: list[tuple[int, ...]]) -> tuple[Runner | None, dict[str, Any]]:
    """The int8 file on TFLite Micro (what a microcontroller runs), for the job to verify on as well,
    and what the report says about it. A file TFLite Micro cannot run is reported, not fatal: LiteRT
    still verifies it."""
    if importlib.util.find_spec("tflite_micro") is None:
        return None, {"skipped": "tflite-micro is not installed (pip install 'dgh-deploy[tflite]')"}
    from dgh_deploy.runtime.tflite_micro_runner import TFLiteMicroRunner

    try:
        runner = TFLiteMicroRunner(path, shapes)
    except DGHError as err:
        log.warning("not verifying on TFLite Micro: %s", err)
        return None, {"error": str(err)}
    return runner, runner.describe()


def file_stem(name: str) -> str:
    """A model name as a file name (factory models are named 'file:func')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"


def output_shapes(model: LoadedModel) -> list[tuple[int, ...]]:
    """The PyTorch outputs' shapes without batch: the runner maps the .tflite outputs onto them."""
    out = TorchRunner(model.module).infer(np.zeros((1, 3, *model.imgsz), np.float32))
    return [tuple(o.shape[1:]) for o in out]


def _install(src: Path, dst: Path) -> Path:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst



