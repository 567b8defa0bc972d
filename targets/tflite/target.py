"""Full-integer INT8 TFLite for LiteRT and TFLite-delegate NPUs (Edge TPU, Ethos-U, i.MX), by one of two converters.

``--converter onnx2tf``: PyTorch -> ONNX (with the model's export rewrites) -> onnx2tf, whose
TensorFlow converter quantizes with our calibration images. ``--converter litert-torch``:
PyTorch -> litert-torch -> ai-edge-quantizer, no ONNX and no TensorFlow (the two stacks live in
separate venvs; left out, ``--converter`` is the one this venv has, litert-torch first). Either way
two files come out, ``*_float32.tflite`` and ``*_full_integer_quant.tflite``, and nothing is
handed back until the float file agrees with PyTorch (so that any later accuracy loss is
quantization, not conversion) and the int8 file is shown to run integer-only with integer I/O.

The float conversion and its parity check also run before generation (:meth:`preflight`), on a
few probe images: a model the converter cannot take, or mis-converts, is refused in seconds,
not after minutes of generation. litert-torch's float file is then the one that gets quantized.

One export rewrite is made for int8's sake: SiLU gets a floor on its input (:mod:`.silu_floor`),
which narrows the int8 range of every conv output that feeds a SiLU. It moves the float outputs
by far less than an int8 step; it is measured on the calibration images against the original
model and dropped if it moves them more than :data:`REWRITE_RTOL` of their scale.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import logging
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
from dgh_deploy.calibration.weights.converter_grid import round_onto_converter_grid
from dgh_deploy.calibration.weights.gptq import ROUNDING_HELP, ROUNDINGS
from dgh_deploy.errors import DGHError, exc_reason
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.reporting.report import Report
from dgh_deploy.runtime.base import Runner, TorchRunner
from dgh_deploy.runtime.litert_runner import LiteRTRunner
from dgh_deploy.targets.base import (
    BIAS_CORRECTION_FLAGS,
    DEFAULT_PERCENTILE,
    OUTPUT_HEADROOM_HELP,
    BuildResult,
    QuantConstraints,
    Target,
    TargetFlag,
    TargetOptions,
    checked_bias_correction,
    checked_headroom,
)
from dgh_deploy.targets.tflite.converter import (
    CONVERTERS,
    DEFAULT_CONVERTER,
    LITERT_TORCH,
    ONNX2TF,
    Conversion,
    ConversionSettings,
    Converter,
    FloatModel,
    file_stem,
)
from dgh_deploy.targets.tflite.integer_ops import check_full_integer
from dgh_deploy.targets.tflite.section import MicroSection, TFLiteSection, tflite_section
from dgh_deploy.targets.tflite.silu_floor import DEFAULT_FLOOR, floor_silu
from dgh_deploy.tasks import get_task
from dgh_deploy.tasks.ultralytics_format import LAYOUT_HELP, LAYOUTS, built_layout, check_layout, with_layout
from dgh_deploy.verification.layers import LayerError
from dgh_deploy.verification.parity import ParityResult, check_float_parity, compare_outputs

log = logging.getLogger("dgh_deploy")

IDENTITY_IMAGES = 4  # the Ultralytics file against the split one: any rewiring shows on every image
DETECTOR_PERCENTILE = 99.999  # see act_range_for
DETECTOR_MSE_PIXELS = 640 * 480  # a detector's input from this many pixels takes mse ranges (act_range_for)
PARITY_IMAGES = 32  # enough to see a broken layer (a wrong one moves every logit), cheap at batch 1
PROBE_IMAGES = 8  # random-pixel images for the check before generation: a mis-conversion moves every output
# An export rewrite may move each output by this much of its scale (max |output|): under half an
# int8 step (1/255 of the range), so the quantized model cannot tell.
REWRITE_RTOL = 2e-3


@dataclass
class StructuralChecks:
    parity: ParityResult
    float_ops: list[dict[str, Any]]
    output_shapes: list[tuple[int, ...]]
    timings: dict[str, float]


@dataclass
class EarlyConversion:
    """The float conversion :meth:`TFLiteInt8Target.preflight` made and checked, kept for the build."""

    key: tuple[str, bool]  # (model name, SiLU floor applied): the module form it converted
    float_model: FloatModel
    folder: tempfile.TemporaryDirectory[str]
    parity: ParityResult


def converter_class(name: str) -> type[Converter]:
    """The converter called ``name``; its module imports nothing heavy."""
    if name == ONNX2TF:
        from dgh_deploy.targets.tflite.onnx2tf_converter import Onnx2tfConverter

        return Onnx2tfConverter
    if name == LITERT_TORCH:
        from dgh_deploy.targets.tflite.litert_converter import LiteRTTorchConverter

        return LiteRTTorchConverter
    raise DGHError(f"unknown converter '{name}'", f"use --converter {' or '.join(CONVERTERS)}")


def default_bias_correction(model: LoadedModel | None) -> str:
    """On for classifiers, off for detectors, chosen over seeds and picks (2-core AMX Xeon; docs/design.md,
    "Biases corrected on the int8 file"): EfficientNet-Lite0 at 224 (``bench/classify_picks.py``, 9 DGH
    builds) agreed with float on 94.10% of coco128 val against 92.62%, logits SQNR 18.2 -> 21.3 dB in
    every build (real calibration gained more: 92.19 -> 95.05%); YOLOv5n at 640 (``bench/tflite_ranges.py``,
    9 builds of ``mse/gptq``) did not gain mAP50-95 and fell below float - 1.0 in 3 builds against none."""
    return "on" if model is not None and model.task == "classify" else "off"


def default_weight_rounding(model: LoadedModel | None) -> str:
    """GPTQ for detectors, nearest (the converter's own rounding) for classifiers. :meth:`build_from_onnx`
    leaves a file's weights to the converter unless GPTQ is asked for (then it refuses).

    Measured with ``bench/tflite_ranges.py``'s ``/gptq`` builds on YOLOv5n (litert-torch, min/max
    ranges, 2-core AVX2): at 640 every one of 3 DGH seeds up, mean 30.53 -> 30.87 mAP50-95; at 320
    27.28 -> 28.27 on seed 0. The default 640 job with it took 983 s of its 20 minutes
    (``bench/input_sizes.py``; 1,182 s since, with the maps layout and mse ranges). On
    EfficientNet-Lite0 it lowered agreement with float (90.63% against 92.19%, real calibration), so
    classifiers keep nearest."""
    return "gptq" if model is not None and model.task == "detect" else "nearest"


def act_range_for(model: LoadedModel | None, opts: TargetOptions) -> tuple[str, float]:
    """(method, percentile) of the activation ranges: the user's ``--act-range`` / ``--percentile``,
    else min/max, and mse for a detector of at least :data:`DETECTOR_MSE_PIXELS`, by measurement.

    YOLOv5n over three DGH seeds (``bench/tflite_ranges.py``, litert-torch, GPTQ weights, maps
    layout): at 320 min/max 28.54 / 28.31 / 28.72 mAP50-95 (float 27.34), mse 27.14 / 27.89 / 27.48; at
    640 min/max 31.41 / 31.60 / 32.04, mse 32.06 / 32.35 / 32.14 (float 33.08); with each SiLU input's
    error counted after the SiLU, 9 bf16 builds 32.09 to 33.50, all within 1.0 of float, but three whole
    default jobs on fresh sets 31.99 / 31.97 / 33.65 (bench/results/input_sizes_fused_amx_cpu.json). A per-tensor
    min/max is set by the few most extreme pixels, and a 640 image has four times as many of them
    to draw: its ranges widen and every value loses resolution, which mse's clipping wins back; at
    320 the clipped tails (the confident boxes' responses) cost more than they give. Before GPTQ and
    the maps layout, at 320: min/max 27.17 to 28.00, percentile 99.999 26.54 to 27.46 (onnx2tf).
    TFLite's activation ranges are asymmetric per tensor, so a percentile clips both tails (TensorRT's
    symmetric |x| percentile clips only the outliers' side and is its detector default). A detector
    asking for percentile ranges gets 99.999 unless ``--percentile`` says otherwise.
    """
    detector = model is not None and model.task == "detect"
    large = detector and model is not None and model.imgsz[0] * model.imgsz[1] >= DETECTOR_MSE_PIXELS
    return opts.act_range or ("mse" if large else "minmax"), \
        opts.percentile_or(DETECTOR_PERCENTILE if detector else DEFAULT_PERCENTILE)


def installed_converter() -> str:
    """The converter whose stack this venv holds, litert-torch (the default install) first."""
    for name in CONVERTERS:
        if not converter_class(name)().missing_requirements():
            return name
    return DEFAULT_CONVERTER  # neither: the job then names the default's install line


class TFLiteInt8Target(Target):
    name: ClassVar[str] = "tflite-int8"
    summary: ClassVar[str] = ("full-integer INT8 .tflite (int8/uint8 I/O) via litert-torch or onnx2tf, "
                              "verified on LiteRT")
    runtime: ClassVar[str] = "LiteRT interpreter (ai_edge_litert), and TFLite Micro's reference kernels (tflite-micro)"
    requires: ClassVar[tuple[str, ...]] = ("ai_edge_litert",)  # and the chosen converter's stack
    install_hint: ClassVar[str] = "pip install 'dgh-deploy[tflite]'"
    section: ClassVar[type[TFLiteSection]] = TFLiteSection
    # --layout is a target flag (tensorrt-int8 declares the same), not a shared option: the CLI then
    # refuses it in the first second for a target that writes no such file, instead of ignoring it.
    flags: ClassVar[tuple[TargetFlag, ...]] = (
        TargetFlag("--layout", "layout", LAYOUT_HELP, choices=LAYOUTS),
        TargetFlag("--io-dtype", "io_dtype", "integer model I/O: int8 (default) or uint8", choices=("int8", "uint8")),
        TargetFlag("--allow-float-ops", "allow_float_ops", "accept float ops left in the integer model", None),
        TargetFlag("--converter", "converter",
                   "PyTorch -> .tflite converter: litert-torch (with ai-edge-quantizer; the default install) or "
                   "onnx2tf (via ONNX and TensorFlow; its own venv: ./install.sh --onnx2tf). Default: the one "
                   "installed, litert-torch first",
                   choices=CONVERTERS),
        TargetFlag("--int16-layers", "int16_layers", metavar="MODULES", help=
                   "keep these PyTorch modules (comma-separated, as report.md's per-layer table names them, e.g. "
                   "model.9,model.8.m.0) at int16 activations with int8 weights (TFLite's 16x8 kernels), the "
                   "rest int8 (litert-torch)"),
        TargetFlag("--weight-rounding", "weight_rounding", ROUNDING_HELP, choices=ROUNDINGS),
        TargetFlag("--output-headroom", "output_headroom", OUTPUT_HEADROOM_HELP, type=float, metavar="X"),
        *BIAS_CORRECTION_FLAGS,
    )

    def __init__(self, options: TargetOptions | None = None, silu_floor: float = DEFAULT_FLOOR,
                 parity_images: int = PARITY_IMAGES, converter: str = "", layout: str = "",
                 io_dtype: str = "int8", allow_float_ops: bool = False, int16_layers: str = "",
                 weight_rounding: str = "", output_headroom: float | None = None,
                 bias_correction: str | bool = "") -> None:
        super().__init__(options)
        self.bias_correction = checked_bias_correction(bias_correction)  # "" = by the task (default_bias_correction)
        self.weight_rounding = weight_rounding  # "" = by the task (default_weight_rounding)
        self.output_headroom = checked_headroom(output_headroom)  # None = by the task (headroom_for)
        self.int16_layers = tuple(name.strip() for name in int16_layers.split(",") if name.strip())
        self.io_dtype = io_dtype  # int8 | uint8 model I/O (int16 with 16-bit activations)
        self.allow_float_ops = allow_float_ops
        self.layout = layout  # maps | split | ultralytics (detectors), "" = maps: see LAYOUT_HELP
        self.silu_floor = silu_floor  # 0 turns the SiLU-floor export rewrite off
        self.parity_images = parity_images  # calibration images the float conversion is checked on
        if converter and converter not in CONVERTERS:
            raise DGHError(f"unknown converter '{converter}'", f"use --converter {' or '.join(CONVERTERS)}")
        self.converter_name = converter or installed_converter()

    def converter(self, model: LoadedModel | None = None) -> Converter:
        """The chosen converter with the current options (tests and the job may replace ``options``),
        and the activation ranges ``model``'s task takes by default (:func:`act_range_for`)."""
        o = self.options
        method, percentile = act_range_for(model, o)
        settings = ConversionSettings(
            per_tensor=o.per_tensor, io_dtype=self.io_dtype, act_bits=o.act_bits, act_range=method,
            percentile=percentile, verbose=log.isEnabledFor(logging.DEBUG), threads=o.threads,
            int16_layers=self.int16_layers,
            output_headroom=self.headroom_for(model))
        return converter_class(self.converter_name)(settings)

    def headroom_for(self, model: LoadedModel | None) -> float:
        """``--output-headroom``, else ``model``'s task's."""
        if self.output_headroom is not None:
            return self.output_headroom
        return get_task(model.task).output_headroom if model is not None else 1.0

    def missing_requirements(self) -> list[str]:
        own = super().missing_requirements()
        return own + [m for m in self.converter().missing_requirements() if m not in own]

    def install_hint_for(self, missing: list[str]) -> str:
        converter = self.converter()
        return converter.install_hint if set(missing) & set(converter.requires) else self.install_hint

    @property
    def constraints(self) -> QuantConstraints:
        o = self.options
        a16 = o.act_bits == 16
        return QuantConstraints(
            weight_bits=8, act_bits=16 if a16 else 8,
            weight_granularity="per-tensor" if o.per_tensor else "per-channel",
            weight_symmetric=True, act_symmetric=a16, power_of_two=False,
            io_dtype="int16" if a16 else self.io_dtype, all_layers_quantized=True,
            notes="TFLite int8 spec: weights int8 [-127, 127] zero point 0, int32 bias, activations int8 "
                  "asymmetric per-tensor (16x8 mode: int16 symmetric); ranges per tensor from the calibration "
                  f"set (min/max, percentile or MSE); converter {self.converter_name}",
        )

    def summary_lines(self, report: Report) -> list[str]:
        """The RAM TFLite Micro needed besides the weights, when the file ran there."""
        micro = _micro(report)
        arena = micro.arena_bytes if micro else None
        return [f"TFLite Micro tensor arena: {arena / 1024:.1f} KiB (RAM besides the weights)"] if arena else []

    def markdown_lines(self, report: Report) -> list[str]:
        section = tflite_section(report.target.facts)
        lines = quantization_lines(section.conversion) if section else []
        micro = _micro(report)
        if micro is None or not micro.arena_bytes:
            return lines
        arena = micro.arena_bytes
        return [*lines, "## TFLite Micro", "", f"Tensor arena (RAM besides the weights): {arena:,} bytes "
                f"({arena / 1024:.1f} KiB).", "", *kernel_lines(micro.kernels)]

    # --- the check before generation ------------------------------------------------------------
    def preflight(self, model: LoadedModel) -> EarlyConversion:
        """Convert the float model and check it against PyTorch on a few probe images, before generation.

        A converter that cannot take the model, or computes something else, is refused here, in
        seconds. The float file is returned for :meth:`build` (litert-torch quantizes that very file).
        """
        probes = CalibrationSet(probe_images(model, PROBE_IMAGES), "probe")
        folder = tempfile.TemporaryDirectory(prefix="dgh-tflite-float-")
        module, rewrites = self.export_module(model, probes)
        log.info("converting the float model with %s, to check it before generating", self.converter_name)
        float_model = self.converter(model).convert_float(model, module, Path(folder.name))
        reference = module if rewrites.get("silu_floor") else model.module
        parity = self._check_parity(model, float_model.path, float_model.diagnose, reference, probes.images)
        self._check_int16_layers(float_model.path)
        return EarlyConversion(self._key(model, rewrites), float_model, folder, parity)

    def _check_int16_layers(self, float_path: Path) -> None:
        """Every --int16-layers name must be a module with ops in the converted file: a typo fails here,
        before generation, not as a silently all-int8 model."""
        from dgh_deploy.targets.tflite.layer_sqnr import layers_in, scope_path

        if not self.int16_layers:
            return
        scopes = {name: scope_path(name, float_path) for name in self.int16_layers}
        found = layers_in(float_path, tuple(scopes.values()))
        missing = [name for name, scope in scopes.items() if not found[scope]]
        if missing:
            raise DGHError(f"--int16-layers names no op of the converted model: {', '.join(missing)}",
                           "give PyTorch module paths as report.md's per-layer table names them (e.g. model.9)")

    def _key(self, model: LoadedModel, rewrites: dict[str, Any]) -> tuple[str, bool, bool]:
        return (model.name, bool(rewrites.get("silu_floor")), bool(rewrites.get("weight_rounding")))

    # --- build -----------------------------------------------------------------------------
    def build(self, model: LoadedModel, calib: CalibrationSet, workdir: Path,
              early: EarlyConversion | None = None) -> BuildResult:
        self.check_options(model)
        converter = self.converter(model)
        with tempfile.TemporaryDirectory(prefix="dgh-tflite-") as tmp:
            scratch = Path(tmp)
            self._calibrator(model, scratch, None, converter).check(calib)  # before the slow conversion
            t0 = time.perf_counter()
            module, rewrites = self.export_module(model, calib)
            module, rewrites = self._round_weights(model, module, rewrites, calib)
            t1 = time.perf_counter()
            float_model = self._float_model(model, module, rewrites, converter, scratch, early)
            self._check_int16_layers(float_model.path)
            t2 = time.perf_counter()
            reference = module if rewrites.get("silu_floor") or rewrites.get("weight_rounding") else None
            data = self._calibrator(model, scratch, float_model, converter).calibrate(calib)
            t3 = time.perf_counter()
            conv = converter.quantize(model, module, float_model, data, scratch)
            corrected = self._correct_biases(model, conv, calib)
            result = self._check_and_install(model, conv, calib, Path(workdir), reference, early)
        # float_conversion is 0 when the preflight's file was reused; calibration is onnx2tf's file
        # writing or litert-torch's per-tensor ranges (onnx2tf calibrates inside its conversion).
        result.timings = {"export": t1 - t0, "float_conversion": t2 - t1, "calibration": t3 - t2, **result.timings,
                          **({"bias_correction": corrected} if corrected is not None else {})}
        section = tflite_section(result.info)
        assert section is not None  # _check_and_install wrote it
        section.export_rewrites = rewrites
        section.act_range_default = not self.options.act_range
        return result

    def _float_model(self, model: LoadedModel, module: nn.Module, rewrites: dict[str, Any], converter: Converter,
                     scratch: Path, early: EarlyConversion | None) -> FloatModel:
        """The preflight's float conversion when it is of this very module form, else a new one."""
        if early is not None and early.key == self._key(model, rewrites) and early.float_model.path.is_file():
            return early.float_model
        return converter.convert_float(model, module, scratch)

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
            # In the report (export_rewrites); on the console only with --verbose: the user cannot act on it.
            log.debug("not flooring SiLU inputs for int8: it would move the outputs too much (%s)", dev.describe())
            return module, {**info, "silu_floor": None, "reason": f"moves the outputs too much: {dev.describe()}"}
        return rewritten, info

    def _round_weights(self, model: LoadedModel, module: nn.Module, rewrites: dict[str, Any],
                       calib: CalibrationSet) -> tuple[nn.Module, dict[str, Any]]:
        """``module`` with its conv weights GPTQ-rounded onto the converter's grid on the calibration
        set, when that is the rounding (the converter then rounds them where they already are)."""
        if self.rounding_for(model) != "gptq":
            return module, rewrites
        log.info("rounding the weights by GPTQ on %d calibration images", len(calib))
        rounded, done = round_onto_converter_grid(module, calib.images, not self.options.per_tensor, self.progress)
        log.info("GPTQ rounded %d convs (%d left to the converter) in %.0f s", done.layers, done.left_to_converter,
                 done.seconds)
        return rounded, {**rewrites, "weight_rounding": done.as_dict()}

    def _correct_biases(self, model: LoadedModel, conv: Conversion, calib: CalibrationSet) -> float | None:
        """The int8 file's conv biases corrected on the calibration set, when that is the setting
        (:mod:`.bias_correction`); the report's conversion info says how many and how far. Its seconds,
        None when off."""
        if self.bias_correction_for(model) != "on":
            conv.info["bias_correction"] = "off"
            return None
        from dgh_deploy.targets.tflite.bias_correction import correct_biases

        log.info("correcting the int8 biases on %d calibration images", len(calib))
        content, done = correct_biases(conv.float_model, conv.int8_model.read_bytes(), calib.images,
                                       threads=self.options.threads, progress=self.progress)
        conv.int8_model.write_bytes(content)  # the scratch copy: installed only after the checks
        conv.info["bias_correction"] = done.as_dict()
        log.info("bias correction moved %d convs' biases (mean %.3f output steps) in %.0f s", done.ops,
                 done.mean_shift_steps, done.seconds)
        return done.seconds

    def bias_correction_for(self, model: LoadedModel | None) -> str:
        """``--bias-correction``, else the task's default (:func:`default_bias_correction`)."""
        return self.bias_correction or default_bias_correction(model)

    def rounding_for(self, model: LoadedModel | None) -> str:
        """``--weight-rounding``, else the task's default (:func:`default_weight_rounding`)."""
        return self.weight_rounding or default_weight_rounding(model)

    def build_from_onnx(self, model: LoadedModel, onnx_path: str | Path, calib: CalibrationSet,
                        workdir: Path) -> BuildResult:
        """Like :meth:`build`, from an ONNX file already exported (input ``images``, outputs ``output0``...);
        onnx2tf only, since litert-torch converts the PyTorch module itself.

        ``model`` is still the PyTorch reference the float conversion is checked against.
        """
        from dgh_deploy.targets.tflite.onnx2tf_converter import Onnx2tfConverter

        self.check_options(model)
        if self.weight_rounding == "gptq":  # asked for: the default for a file is the converter's own
            raise DGHError("--weight-rounding gptq rounds the PyTorch module's weights, not an ONNX file's",
                           "pass the model itself, or use --weight-rounding nearest")
        converter = self.converter(model)
        if not isinstance(converter, Onnx2tfConverter):
            raise DGHError(f"--converter {self.converter_name} converts the PyTorch module, not an ONNX file",
                           "pass the model itself, or use --converter onnx2tf")
        with tempfile.TemporaryDirectory(prefix="dgh-tflite-") as tmp:
            scratch = Path(tmp)
            data = self._calibrator(model, scratch, None, converter).calibrate(calib)
            src = scratch / f"{file_stem(model.name)}.onnx"
            shutil.copyfile(onnx_path, src)
            conv = converter.quantize_onnx(src, data, scratch)
            self._correct_biases(model, conv, calib)
            return self._check_and_install(model, conv, calib, Path(workdir))

    def _calibrator(self, model: LoadedModel, scratch: Path, float_model: FloatModel | None,
                    converter: Converter) -> Any:
        """The chosen converter's calibrator (a subclass target may name its own)."""
        return converter.calibrator(model, scratch, float_model or FloatModel(scratch / "none", 0.0))

    def _check_and_install(self, model: LoadedModel, conv: Conversion, calib: CalibrationSet, workdir: Path,
                           reference: nn.Module | None = None, early: EarlyConversion | None = None) -> BuildResult:
        """Check the float file against ``reference`` (the module converted, if not ``model.module``) and
        the int8 file's integer-only contract; then, and only then, put the files in ``workdir``."""
        o = self.options
        checks = self._check(model, conv, calib, reference)
        stem = conv.int8_model.name.removesuffix("_full_integer_quant.tflite")
        artifacts = {
            "model": _install(conv.int8_model, workdir / f"{stem}_full_integer_quant.tflite"),
            "float_model": _install(conv.float_model, workdir / f"{stem}_float32.tflite"),
            **{role: _install(p, workdir / p.name) for role, p in conv.sources.items()},
        }
        runner: Runner = LiteRTRunner(artifacts["model"], o.threads, checks.output_shapes)
        ultralytics = None
        if self.layout == "ultralytics":  # a file for LiteRT: its MCU twin is the split file beside it
            runner, ultralytics = self._ultralytics_file(model, artifacts, calib)
            micro = MicroSection(skipped="--layout ultralytics (float I/O, for LiteRT); the split int8 file "
                                         "beside it is the one for TFLite Micro")
        else:
            runner.device_runner, micro = micro_runner(artifacts["model"], checks.output_shapes)
            if runner.device_runner is not None:
                micro.kernels = kernel_parity(artifacts["model"], calib.images[:1], model)
        parity = {**checks.parity.as_dict(), "inputs": "calibration images",
                  "reference": "PyTorch float32" + (" (as exported)" if reference is not None else "")}
        info = TFLiteSection(self.converter_name, parity, checks.float_ops, runner.io_details(), len(calib),
                             dict(conv.info), micro, built_layout(model, self.layout), ultralytics)
        if early is not None:
            info.float_parity_before_generation = {**early.parity.as_dict(), "inputs": "random-pixel probes"}
        timings = {"conversion": conv.seconds, **checks.timings}
        return BuildResult(artifacts=artifacts, runner=runner, info=info, timings=timings)

    def _check(self, model: LoadedModel, conv: Conversion, calib: CalibrationSet,
               reference: nn.Module | None) -> StructuralChecks:
        """The float file agrees with PyTorch, and the int8 file is integer-only with integer I/O."""
        t0 = time.perf_counter()
        parity = self._check_parity(model, conv.float_model, conv.diagnose, reference or model.module,
                                    calib.images[: self.parity_images])
        parity_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        float_ops = check_full_integer(conv.int8_model, self.constraints.io_dtype, self.allow_float_ops)
        timings = {"parity": parity_s, "integer_check": time.perf_counter() - t0}
        return StructuralChecks(parity, float_ops, output_shapes(model), timings)

    def _check_parity(self, model: LoadedModel, float_path: Path, diagnose: Any, reference: nn.Module,
                      images: np.ndarray) -> ParityResult:
        """The float file against PyTorch on ``images``; a failure's fix is the converter's own advice."""
        try:
            return check_float_parity(
                LiteRTRunner(float_path, self.options.threads, output_shapes(model)), TorchRunner(reference),
                images, classify=model.task == "classify", atol=self.options.parity_atol, diagnose=diagnose,
                what=f"{self.converter_name}'s float conversion")
        except DGHError as err:
            raise DGHError(err.problem, self.converter(model).parity_fix) from None

    layer_runtime: ClassVar[str] = "LiteRT reference kernels, the int8 file against its float twin"
    repair_flag: ClassVar[str] = "--int16-layers"

    def repair_in_use(self) -> bool:
        return bool(self.int16_layers)

    def layer_errors(self, model: LoadedModel, result: BuildResult, images: np.ndarray) -> list[LayerError]:
        from dgh_deploy.targets.tflite.layer_sqnr import full_path, layer_sqnr

        int8 = result.artifacts.get("split_model", result.artifacts["model"])  # the file in integers end to end
        rows = layer_sqnr(result.artifacts["float_model"], int8, images)
        names = export_names(model)
        return [dataclasses.replace(r, layer=full_path(r.layer, names)) for r in rows]

    def check_options(self, model: LoadedModel) -> None:
        """Refuse what a TFLite int8 model cannot be, rather than silently building something else."""
        o = self.options
        if self.io_dtype not in ("int8", "uint8"):
            raise DGHError(f"tflite-int8 has no '{self.io_dtype}' I/O", "use --io-dtype int8 or uint8")
        if o.weight_bits != 8 or o.act_bits not in (8, 16):
            raise DGHError(
                f"tflite-int8 quantizes to 8 bits (or int16 activations with int8 weights), not W{o.weight_bits}"
                f"A{o.act_bits}",
                "drop the bit-width options for this target",
            )
        if o.act_bits == 16 and self.io_dtype != "int8":
            raise DGHError(f"with 16-bit activations the model I/O is int16, not {self.io_dtype}", "drop --io-dtype")
        if not o.weight_symmetric:
            raise DGHError("tflite-int8 follows the TFLite int8 spec: symmetric weights (zero point 0)",
                           "drop weight_symmetric=False for this target")
        self.converter(model).check_settings()
        o.check_percentile(act_range_for(model, o)[0])
        check_layout(self.layout, model, self.name)

    def deploy_form(self, model: LoadedModel) -> LoadedModel:
        """A detector ends at its raw maps unless ``--layout`` says otherwise (``DetectLayout.maps``: int8
        boxes and scores cost YOLOv5n at 640 about half a point of mAP50-95 more)."""
        return with_layout(model, self.layout, "maps")

    def _ultralytics_file(self, model: LoadedModel, artifacts: dict[str, Path],
                          calib: CalibrationSet) -> tuple[Runner, dict[str, Any]]:
        """--layout ultralytics: the checked int8 file rewrapped as 'model', the split one kept beside it;
        its runner, and the report's facts about it."""
        from dgh_deploy.targets.tflite.ultralytics_file import ultralytics_artifact

        split = artifacts["split_model"] = artifacts["model"]
        path = split.with_name(split.name.replace("_full_integer_quant", "_ultralytics_int8"))
        runner, info = ultralytics_artifact(model, split, output_shapes(model), path,
                                            calib.images[:IDENTITY_IMAGES], self.options.threads)
        artifacts["model"] = path
        return runner, info


def probe_images(model: LoadedModel, n: int, seed: int = 0) -> np.ndarray:
    """``n`` images of uniformly random pixels, in the model's input space: what the early parity check runs on."""
    h, w = model.imgsz
    pixels = np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3)).astype(np.float32)
    return model.preprocessing.normalise(pixels)


def micro_runner(path: Path, shapes: list[tuple[int, ...]]) -> tuple[Runner | None, MicroSection]:
    """The int8 file on TFLite Micro (what a microcontroller runs), for the job to verify on as well,
    and what the report says about it. A file TFLite Micro cannot run is reported, not fatal: LiteRT
    still verifies it."""
    if importlib.util.find_spec("tflite_micro") is None:
        return None, MicroSection(skipped="tflite-micro is not installed (pip install 'dgh-deploy[tflite]')")
    from dgh_deploy.runtime.tflite_micro_runner import TFLiteMicroRunner

    try:
        runner = TFLiteMicroRunner(path, shapes)
    except DGHError as err:
        log.warning("not verifying on TFLite Micro: %s", err)
        return None, MicroSection(error=str(err))
    return runner, MicroSection.from_json(runner.describe())


def kernel_parity(path: Path, image: np.ndarray, model: LoadedModel) -> dict[str, Any]:
    """Where LiteRT's and TFLite Micro's kernels part on ``path`` for one calibration image (the report's
    ``tflite_micro.kernels``); a failure is reported, not fatal."""
    from dgh_deploy.runtime.tflite_micro_runner import ARENA_LIMIT
    from dgh_deploy.targets.tflite.kernel_parity import kernel_differences, summary

    t0 = time.perf_counter()
    try:
        rows, ops = kernel_differences(path, image, ARENA_LIMIT, export_names(model))
    except Exception as exc:  # a diagnosis: whatever fails, say so and keep the build
        return {"error": exc_reason(exc, 200)}
    return {**summary(rows, ops), "seconds": round(time.perf_counter() - t0, 2)}


def kernel_lines(kernels: dict[str, Any] | None) -> list[str]:
    """report.md's view of where LiteRT's and TFLite Micro's kernels part."""
    if not kernels or "ops" not in kernels:
        return []
    lines = [f"LiteRT and TFLite Micro on the same file and one calibration image: {kernels['ops_differing']} of "
             f"{kernels['ops']} ops give different int8 outputs."]
    if kernels.get("adding_most"):
        kinds = ", ".join(f"{op} {n}" for op, n in sorted(kernels["adding_by_op"].items(), key=lambda kv: -kv[1]))
        lines += [f"Ops that add a difference, by type: {kinds}. Those adding the most:", "",
                  "| # | layer | op | max steps | share differing | RMS steps added |", "|" + " --- |" * 6]
        lines += [f"| {k['index']} | `{k['layer']}` | {k['op']} | {k['max_steps']} | {k['share_differing']:.3f} | "
                  f"{k['added_rms_steps']:.2f} |" for k in kernels["adding_most"]]
    return [*lines, ""]


def quantization_lines(conversion: dict[str, Any]) -> list[str]:
    """How the int8 file was made, in one paragraph: ranges, output headroom, bias correction."""
    parts = [f"activation ranges by {conversion['act_range']}"] if "act_range" in conversion else []
    if conversion.get("output_headroom", 1.0) != 1.0:
        parts.append(f"outputs' range tops x{conversion['output_headroom']:g} (headroom)")
    corrected = conversion.get("bias_correction")
    if isinstance(corrected, dict):
        parts.append(f"biases of {corrected['ops']} convs corrected on {corrected['images']} calibration images "
                     f"(mean move {corrected['mean_shift_steps']:.2f} output steps, {corrected['levels']} passes)")
    elif corrected == "off":
        parts.append("no bias correction")
    text = "; ".join(parts)
    return ["## How the int8 file was made", "", text[:1].upper() + text[1:] + ".", ""] if parts else []


def _micro(report: Report) -> MicroSection | None:
    """The report's TFLite Micro run, where a tflite-int8 build wrote the report."""
    section = tflite_section(report.target.facts)
    return section.tflite_micro if section else None


def export_names(model: LoadedModel) -> list[str]:
    """The module paths of what the file was made of; a shared module (Ultralytics' one SiLU) under each name."""
    return [n for n, _ in model.for_export().named_modules(remove_duplicate=False) if n]


def output_shapes(model: LoadedModel) -> list[tuple[int, ...]]:
    """The PyTorch outputs' shapes without batch: the runner maps the .tflite outputs onto them."""
    out = TorchRunner(model.module).infer(np.zeros((1, 3, *model.imgsz), np.float32))
    return [tuple(o.shape[1:]) for o in out]


def _install(src: Path, dst: Path) -> Path:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst



