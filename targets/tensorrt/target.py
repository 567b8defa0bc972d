"""TensorRT INT8 target: TensorRT-style calibration on the CPU, one set of scales for two TensorRT generations.

1. Export the float ONNX model (BN folded, the model's export rewrites applied).
2. Calibrate on ONNX Runtime CPU: one |x| histogram per activation, fed batch by batch; the
   range by TensorRT's entropy calibration (the default for classifiers), percentile 99.999 (the
   default for detectors, see :func:`act_range_for`) or max.
3. Write, from the same scales (amax / 127):
   * ``model_qdq.onnx``: explicit Q/DQ quantization for TensorRT 10 and 11 (11 has nothing else);
   * ``model.cache``: TensorRT's calibration cache for implicit INT8 on TensorRT <= 10, with
     ``model_float.onnx``;
   * ``build_engine.sh``: the exact ``trtexec`` (and ``polygraphy``) command lines for both.
4. Build the engine here only when tensorrt and a GPU are both present.

Verification runs the Q/DQ model on ONNX Runtime CPU (:mod:`dgh_deploy.runtime.onnxruntime_runner`
explains how close that is to TensorRT's int8 math).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from dgh_deploy.artifacts import atomic_path
from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.errors import DGHError, exc_reason
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.onnx_export import INPUT_NAME, export_onnx
from dgh_deploy.runtime.base import Runner
from dgh_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from dgh_deploy.targets.base import (
    DEFAULT_PERCENTILE,
    BuildResult,
    QuantConstraints,
    Target,
    TargetFlag,
    TargetOptions,
)
from dgh_deploy.targets.tensorrt.cache import tensorrt_version, write_calibration_cache
from dgh_deploy.targets.tensorrt.calibrator import ActRange, TensorRTCalibrator, canonical_act_range
from dgh_deploy.targets.tensorrt.engine import (
    EXPLICIT_ENGINE,
    EngineInputs,
    build_commands,
    build_engine,
    can_build_here,
    write_build_script,
)
from dgh_deploy.targets.tensorrt.qdq import activation_bytes_per_image, calibration_tensors, insert_qdq
from dgh_deploy.targets.tensorrt.section import TensorRTSection
from dgh_deploy.tasks.ultralytics_format import LAYOUT_HELP, LAYOUTS, built_layout, check_layout, with_layout
from dgh_deploy.verification.layers import LayerError

log = logging.getLogger("dgh_deploy")

FLOAT_MODEL = "model_float.onnx"
QDQ_MODEL = "model_qdq.onnx"
ULTRALYTICS_MODEL = "model_qdq_ultralytics.onnx"
CACHE = "model.cache"
BUILD_SCRIPT = "build_engine.sh"
# Activations of all calibrated tensors for one collection batch stay under this many bytes.
COLLECTION_BYTES = 512 * 1024 * 1024
MAX_COLLECTION_BATCH = 64
DETECTOR_PERCENTILE = 99.999


class TensorRTInt8Target(Target):
    name = "tensorrt-int8"
    summary = "TensorRT INT8: Q/DQ ONNX for TensorRT 10/11 and a calibration cache for TensorRT <= 10"
    runtime = "ONNX Runtime CPU (Q/DQ); TensorRT engine when a GPU and tensorrt are present"
    requires = ("onnx", "onnxruntime")
    install_hint = "pip install onnx onnxruntime (tensorrt is only needed on the GPU machine that builds the engine)"
    section = TensorRTSection
    flags = (
        TargetFlag("--layout", "layout", LAYOUT_HELP, choices=LAYOUTS),  # shared with tflite-int8
        TargetFlag("--float-layers", "float_layers", metavar="MODULES", help=
                   "leave these PyTorch modules (comma-separated, as report.md's per-layer table names them, "
                   "e.g. model.9) without Q/DQ: TensorRT runs them in float"),
    )

    def __init__(self, options: TargetOptions | None = None, layout: str = "", float_layers: str = "") -> None:
        super().__init__(options)
        self.layout = layout  # maps | split | ultralytics (detectors), "" = split: see LAYOUT_HELP
        self.float_layers = tuple(name.strip() for name in float_layers.split(",") if name.strip())

    def preflight(self, model: LoadedModel) -> None:
        """--float-layers must name modules of the exported graph: a typo fails before generation."""
        if not self.float_layers:
            return
        import onnx

        from dgh_deploy.targets.tensorrt.qdq import in_modules

        with tempfile.TemporaryDirectory(prefix="dgh-trt-names-") as tmp:
            names = [n.name for n in onnx.load(str(export_onnx(model, Path(tmp) / FLOAT_MODEL))).graph.node]
        missing = [m for m in self.float_layers if not any(in_modules(n, (m,)) for n in names)]
        if missing:
            raise DGHError(f"--float-layers names no layer of the exported model: {', '.join(missing)}",
                           "give PyTorch module paths as report.md's per-layer table names them (e.g. model.9)")

    @property
    def constraints(self) -> QuantConstraints:
        return QuantConstraints(
            weight_bits=8, act_bits=8,
            weight_granularity="per-tensor" if self.options.per_tensor else "per-channel",
            weight_symmetric=True, act_symmetric=True, power_of_two=False, io_dtype="float32",
            all_layers_quantized=True,
            notes="TensorRT int8: symmetric, zero point 0; every Conv/Gemm/MatMul and residual Add in int8, "
                  "float I/O",
        )

    def check_options(self, model: LoadedModel) -> None:
        self._checked_act_range(model)
        check_layout(self.layout, model, self.name)

    def deploy_form(self, model: LoadedModel) -> LoadedModel:
        """Decoded in the graph unless ``--layout`` says otherwise: the outputs are float, so the int8 step
        that makes ``maps`` tflite-int8's default does not apply."""
        return with_layout(model, self.layout, "split")

    def _checked_act_range(self, model: LoadedModel) -> ActRange:
        opts = self.options
        if opts.weight_bits != 8 or opts.act_bits != 8:
            raise DGHError(
                f"TensorRT INT8 runs 8-bit weights and activations, not W{opts.weight_bits}A{opts.act_bits}",
                "drop --bits for this target",
            )
        return act_range_for(model, opts)

    def build(self, model: LoadedModel, calib: CalibrationSet, workdir: Path, early: Any = None) -> BuildResult:
        import onnx

        act_range = self._checked_act_range(model)
        workdir = Path(workdir)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        float_path = export_onnx(model, workdir / FLOAT_MODEL, dynamic_batch=True)
        float_proto = onnx.load(str(float_path))
        timings["export"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        amax = self._calibrate(float_proto, calib, act_range)
        timings["calibration"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        written, info = self._write_int8(model, float_proto, amax, calib, act_range, workdir)
        artifacts = {"model": written.pop("model"), "float_model": float_path, **written}
        timings["qdq"] = time.perf_counter() - t0
        if can_build_here():
            t0 = time.perf_counter()
            self._build_engine(artifacts, info, (1, 3, *model.imgsz))
            timings["engine"] = time.perf_counter() - t0
        runner: Runner = OnnxRuntimeRunner(artifacts["model"], self.options.threads)
        info.layout = built_layout(model, self.layout)
        if self.layout == "ultralytics":  # after the engine: TensorRT builds from the split Q/DQ file
            runner, info.ultralytics = self._ultralytics_file(model, artifacts, calib)
        return BuildResult(artifacts=artifacts, runner=runner, info=info, timings=timings)

    layer_runtime: ClassVar[str] = "ONNX Runtime CPU, the Q/DQ model against the float ONNX model"
    repair_flag: ClassVar[str] = "--float-layers"

    def repair_in_use(self) -> bool:
        return bool(self.float_layers)

    def layer_errors(self, model: LoadedModel, result: BuildResult, images: np.ndarray) -> list[LayerError]:
        from dgh_deploy.targets.tensorrt.layer_errors import qdq_layer_errors

        qdq = result.artifacts.get("split_model", result.artifacts["model"])
        return qdq_layer_errors(result.artifacts["float_model"], qdq, images, self.options.threads)

    def _ultralytics_file(self, model: LoadedModel, artifacts: dict[str, Path],
                          calib: CalibrationSet) -> tuple[Runner, dict[str, Any]]:
        """--layout ultralytics: the Q/DQ model as Ultralytics' ONNX, as 'model'; the split one kept beside it."""
        from dgh_deploy.targets.tensorrt.ultralytics_file import IDENTITY_IMAGES, ultralytics_artifact

        split = artifacts["split_model"] = artifacts["model"]
        path = split.with_name(ULTRALYTICS_MODEL)
        runner, info = ultralytics_artifact(model, split, path, calib.images[:IDENTITY_IMAGES], self.options.threads)
        artifacts["model"] = path
        return runner, info

    def _calibrate(self, float_proto: Any, calib: CalibrationSet, act_range: ActRange) -> dict[str, float]:
        """``tensor -> amax`` for every float activation, in batches sized to stay in memory."""
        tensors = calibration_tensors(float_proto)
        per_image = max(activation_bytes_per_image(float_proto, tensors), 1)
        batch = int(min(MAX_COLLECTION_BATCH, max(1, COLLECTION_BYTES // per_image)))
        return TensorRTCalibrator(float_proto, tensors, act_range, batch, self.options.threads).calibrate(calib)

    def _write_int8(self, model: LoadedModel, float_proto: Any, amax: dict[str, float], calib: CalibrationSet,
                    act_range: ActRange, workdir: Path) -> tuple[dict[str, Path], TensorRTSection]:
        """The Q/DQ model, the calibration cache and the build script, from one set of ranges."""
        import onnx

        opts = self.options
        qdq_proto, plan = insert_qdq(float_proto, amax, per_channel=not opts.per_tensor,
                                     float_modules=self.float_layers)
        qdq_path = workdir / QDQ_MODEL
        with atomic_path(qdq_path) as tmp:
            onnx.save(qdq_proto, str(tmp))
        cache_path = workdir / CACHE
        header = write_calibration_cache(cache_path, amax)
        static = bool(float_proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value)  # see export_onnx
        engine_inputs = EngineInputs(QDQ_MODEL, FLOAT_MODEL, CACHE, INPUT_NAME, (1, 3, *model.imgsz), static)
        commands = build_commands(engine_inputs)
        about = (f"{model.name}: scales from {len(calib)} calibration images ({calib.source}), "
                 f"activation ranges by {act_range}, computed on the CPU.")
        script = write_build_script(workdir / BUILD_SCRIPT, engine_inputs, commands, about)
        artifacts = {"model": qdq_path, "cache": cache_path, "build_script": script}
        info = TensorRTSection(
            tensorrt=tensorrt_version(), act_range=act_range.method, act_range_default=not opts.act_range,
            percentile=act_range.percentile, build_commands=commands, engine=None, cache_header=header,
            cache_tensors=len(amax), quantized_layers=len(plan.layers), qdq_activations=len(plan.activations),
            float_layers=plan.float_layers, weights="per-tensor" if opts.per_tensor else "per-channel",
        )
        return artifacts, info

    def _build_engine(self, artifacts: dict[str, Path], info: TensorRTSection, shape: tuple[int, ...]) -> None:
        """The engine, where tensorrt and a GPU are here; a failure leaves the CPU artifacts valid."""
        qdq_path = artifacts["model"]
        try:
            engine = build_engine(qdq_path, qdq_path.parent / EXPLICIT_ENGINE, INPUT_NAME, shape)
        except Exception as exc:  # report, and leave the commands
            log.warning("TensorRT engine build failed (%s); build it with %s", exc, BUILD_SCRIPT)
            info.engine_error = exc_reason(exc, 300)
            return
        artifacts["engine"] = engine
        info.engine = engine.name


def act_range_for(model: LoadedModel, opts: TargetOptions) -> ActRange:
    """The user's ``--act-range``/``--percentile``, else entropy for classifiers, percentile 99.999 for detectors.

    Entropy clips each activation where the histogram's bulk ends. For a detector the tail it
    clips is the few strong responses that make a confident box: on YOLOv5n at 320 (64 coco128
    train images, 128 val images) entropy gave mAP50-95 25.95 against 27.37 float; max gave
    27.91. Max, in turn, lets a few outlying values set the range, and then the images matter
    little: over nine picks each, noise 27.05, DGH 27.78, real 28.18. Percentile 99.999 keeps
    the strong responses and drops the outliers: DGH 28.21, bns 27.83, real 27.74, noise 26.46
    (``bench/detect_picks.py``). A detector given ``--act-range percentile`` alone gets 99.999 too.
    """
    if opts.act_range:
        method = canonical_act_range(opts.act_range)
    else:
        method = "percentile" if model.task == "detect" else canonical_act_range("")
    opts.check_percentile(method)
    if method != "percentile":
        return ActRange(method)
    return ActRange(method, opts.percentile_or(DETECTOR_PERCENTILE if model.task == "detect" else DEFAULT_PERCENTILE))



