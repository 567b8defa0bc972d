"""PyTorch -> float .tflite with litert-torch, then full-integer with ai-edge-quantizer: no ONNX, no TensorFlow.

This is the converter Ultralytics 8.4 moved its ``tflite`` export to. litert-torch lowers the
module through ``torch.export``, so PyTorch's own semantics reach the file: the strided slice of
the textbook CIFAR option-A shortcut (``x[:, :, ::2, ::2]``), which onnx2tf mis-converts,
comes out right. ai-edge-quantizer then quantizes that very float file (the one the parity check
passed), so the float conversion of the job's early check is reused, not redone.

What the wrapper adds:

* NHWC input and channel-last feature-map outputs (``to_channel_last_io``), as edge runtimes
  and onnx2tf's files have them: one runner reads either converter's file.
* Ranges are the project's: the quantizer's calibration result is built from the calibrator's
  min/max, percentile or MSE ranges (:class:`~dgh_deploy.targets.tflite.calibrator.LiteRTCalibrator`,
  :mod:`.litert_qsv`), so the quantizer never runs its own calibration (a moving average of min
  and max over the whole float model on every image) only to have it replaced.
* W8A16: int16 activations (symmetric, as LiteRT's 16x8 kernels want) with int8 weights.
* Both tools print progress trees and reports: captured into a log unless verbose.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from dgh_deploy.errors import DGHError, exc_reason
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.runtime.base import flatten_outputs
from dgh_deploy.targets.tflite.calibrator import LiteRTCalibration, LiteRTCalibrator
from dgh_deploy.targets.tflite.console import capture_output
from dgh_deploy.targets.tflite.converter import (
    ACT_RANGES,
    LITERT_TORCH,
    Conversion,
    Converter,
    FloatModel,
    file_stem,
)
from dgh_deploy.targets.tflite.flatbuffer import inline_buffers, uint8_io
from dgh_deploy.targets.tflite.layer_sqnr import layer_regex, scope_path
from dgh_deploy.targets.tflite.litert_qsv import calibration_result
from dgh_deploy.versions import installed_version

log = logging.getLogger("dgh_deploy")


class LiteRTTorchConverter(Converter):
    name: ClassVar[str] = LITERT_TORCH
    requires: ClassVar[tuple[str, ...]] = ("litert_torch", "ai_edge_quantizer", "ai_edge_litert")
    install_hint: ClassVar[str] = ("pip install 'dgh-deploy[litert]' (the default install, ./install.sh) in a venv "
                                   "without onnx2tf: the two cannot share one")
    act_ranges: ClassVar[tuple[str, ...]] = ACT_RANGES
    act_bits: ClassVar[tuple[int, ...]] = (8, 16)
    io_dtypes: ClassVar[tuple[str, ...]] = ("int8", "uint8")  # uint8: QUANTIZE ops around the recipe's int8 I/O
    mixed_precision: ClassVar[bool] = True  # ai-edge-quantizer takes a recipe per op (name regex)

    # --- float --------------------------------------------------------------------------------
    def convert_float(self, model: LoadedModel, module: nn.Module, scratch: Path) -> FloatModel:
        x = model.dummy_input(1)
        with torch.no_grad():
            maps = [i for i, o in enumerate(flatten_outputs(module.eval()(x))) if o.ndim == 4]
        log_path = scratch / "litert_torch.log"
        t0 = time.perf_counter()
        try:
            with capture_output(log_path, enabled=not self.settings.verbose):
                import litert_torch  # inside the capture: its torchao import warns on the console

                wrapped = litert_torch.to_channel_last_io(module, args=[0], outputs=maps or None).eval()
                edge = litert_torch.convert(wrapped, (x.permute(0, 2, 3, 1).contiguous(),))
                content = bytes(edge.model_content())
        except DGHError:
            raise
        except Exception as exc:  # any lowering failure is reported the same way
            raise DGHError(f"litert-torch cannot convert '{model.name}' ({exc_reason(exc)})",
                           "replace the op it names with standard layers (the model's export_form), or try "
                           f"--converter onnx2tf; full log: {_keep_log(log_path)}") from exc
        seconds = time.perf_counter() - t0
        path = scratch / f"{file_stem(model.name)}_float32.tflite"
        path.write_bytes(inline_buffers(content))
        return FloatModel(path, seconds, _divergence_finder(model, module, path, scratch))

    # --- int8 ---------------------------------------------------------------------------------
    def calibrator(self, model: LoadedModel, scratch: Path, float_model: FloatModel) -> LiteRTCalibrator:
        s = self.settings
        return LiteRTCalibrator(float_model.path, model.imgsz, s.act_range, s.percentile, s.act_bits,
                                output_headroom=s.output_headroom)

    def quantize(self, model: LoadedModel, module: nn.Module, float_model: FloatModel, data: LiteRTCalibration,
                 scratch: Path) -> Conversion:
        from ai_edge_quantizer import qtyping, quantizer

        s = self.settings
        log_path = scratch / "ai_edge_quantizer.log"
        t0 = time.perf_counter()
        try:
            with capture_output(log_path, enabled=not s.verbose):
                float_bytes = float_model.path.read_bytes()
                qt = quantizer.Quantizer(float_bytes)
                granularity = qtyping.QuantGranularity.TENSORWISE if s.per_tensor else \
                    qtyping.QuantGranularity.CHANNELWISE
                qt.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, activation_num_bits=s.act_bits,
                                     weight_num_bits=8, weight_granularity=granularity)
                for layer in s.int16_layers:  # later configs win: these ops take int16, QUANTIZE ops between
                    scope = layer_regex(scope_path(layer, float_model.path))
                    qt.add_static_config(scope, qtyping.TFLOperationName.ALL_SUPPORTED,
                                         activation_num_bits=16, weight_num_bits=8, weight_granularity=granularity)
                qsvs = calibration_result(float_bytes, qt.get_quantization_recipe(), data.signature, data.ranges)
                content = bytes(qt.quantize(qsvs, enable_progress_report=False).quantized_model)
        except DGHError:
            raise
        except Exception as exc:
            raise DGHError(f"ai-edge-quantizer could not quantize '{model.name}' ({exc_reason(exc)})",
                           f"pass --allow-float-ops to keep such ops in float, or try --converter onnx2tf; "
                           f"full log: {_keep_log(log_path)}") from exc
        seconds = time.perf_counter() - t0
        path = scratch / f"{file_stem(model.name)}_full_integer_quant.tflite"
        content = inline_buffers(content)  # TFLite Micro reads no weights stored after the flatbuffer
        if s.act_bits == 8 and s.io_dtype == "uint8":
            content = uint8_io(content)
        path.write_bytes(content)
        info: dict[str, Any] = {
            "quant_type": s.quant_type, "recipe": f"static_wi8_ai{s.act_bits}"
                                                  + (" (ai16 for --int16-layers)" if s.int16_layers else ""),
            "act_range": data.method, "project_ranges": len(qsvs), "output_headroom": s.output_headroom,
            "litert_torch_version": installed_version("litert-torch"),
            "ai_edge_quantizer_version": installed_version("ai-edge-quantizer"),
            "float_conversion_s": round(float_model.seconds, 3),
        }
        if s.int16_layers:
            info["int16_layers"] = list(s.int16_layers)
        return Conversion(float_model.path, path, seconds, info, float_model.diagnose)


def _divergence_finder(model: LoadedModel, module: nn.Module, path: Path,
                       scratch: Path) -> Callable[[np.ndarray], str | None]:
    """The first layer that disagrees, found against an ONNX export of the same module (made only when asked)."""

    def find(x: np.ndarray) -> str | None:
        from dgh_deploy.onnx_export import export_onnx
        from dgh_deploy.targets.tflite.divergence import first_divergence

        onnx_path = export_onnx(model, scratch / f"{file_stem(model.name)}.onnx", module=module)
        div = first_divergence(onnx_path, path, x)
        return div.describe() if div is not None else None

    return find


def _keep_log(log_path: Path) -> str:
    """Copy the log out of the scratch folder (deleted after the build) so the user can read it."""
    if not log_path.is_file():
        return "not captured (verbose run: see the console)"
    fd, kept = tempfile.mkstemp(prefix=f"dgh-{log_path.stem}-", suffix=".log")
    with open(fd, "w") as f:
        f.write(log_path.read_text(errors="replace"))
    return kept
