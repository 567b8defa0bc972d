"""ONNX -> float32 and full-integer .tflite with onnx2tf 1.29.x, quietly, offline, and strictly.

What this wraps around ``onnx2tf.convert``, and why:

* onnx2tf fetches ``calibration_image_sample_data_20x128x128x3_float32.npy`` from GitHub at every
  conversion unless that file sits in the working directory (it uses it for shape probing even
  when our own calibration data is given). We run in a scratch folder holding a local copy made
  from our calibration images, so no conversion ever touches the network.
* onnx2tf simplifies the graph by calling the ``onnxsim`` executable through ``PATH``: found in an
  activated venv, missing when the venv's python is called directly. The result differs (the
  CIFAR option-A shortcut fails to convert without it), so we put the interpreter's own bin
  folder on ``PATH`` and get the same conversion either way.
* onnx2tf overwrites its input ONNX with the simplified graph: it gets a copy.
* onnx2tf prints hundreds of lines, TensorFlow's C++ code more on fd 2: captured into a log
  unless verbose; the log feeds the error messages.
* onnx2tf's own int8 option writes five quantized files (dynamic-range, integer, full-integer, and
  both with int16 activations), four of them calibrating on the whole set: YOLOv8n at 320 with 64
  images took 214 s, against 96 s for onnx2tf's float conversion plus the one full-integer file made
  here with onnx2tf's own converter settings (from its saved model, the same representative data;
  the int8 outputs were bit-identical). A failure to quantize is then an exception here, not a
  warning in onnx2tf's log.
* onnx2tf exits the process on some bad inputs: that, like any converter failure, becomes :class:`DGHError`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

from dgh_deploy.errors import DGHError
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.onnx_export import INPUT_NAME, export_onnx
from dgh_deploy.targets.tflite.calibrator import RepresentativeData, TFLiteCalibrator
from dgh_deploy.targets.tflite.console import capture_output
from dgh_deploy.targets.tflite.converter import (
    ACT_RANGES,
    ONNX2TF,
    Conversion,
    ConversionSettings,
    Converter,
    FloatModel,
    file_stem,
)
from dgh_deploy.targets.tflite.tf_ranges import project_ranges
from dgh_deploy.versions import installed_version

SAMPLE_DATA_NAME = "calibration_image_sample_data_20x128x128x3_float32.npy"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXC_LINE = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Exit))\s*:\s*(.+)$")


def write_sample_data(folder: Path, nhwc: np.ndarray) -> Path:
    """The file onnx2tf would otherwise download: 20 of our own images, so any use of it is sane."""
    reps = -(-20 // len(nhwc))
    sample = np.concatenate([nhwc] * reps)[:20].astype(np.float32)
    path = folder / SAMPLE_DATA_NAME
    np.save(path, sample)
    return path


def convert(onnx_path: Path, scratch: Path, data: RepresentativeData | None, settings: ConversionSettings,
            sample: np.ndarray | None = None) -> Conversion:
    """Run onnx2tf on a copy of ``onnx_path`` inside ``scratch``; return the two .tflite files.

    Without ``data`` only the float file is written (``int8_model`` then does not exist), and
    ``sample`` (NHWC images) stands in for onnx2tf's downloaded sample file.
    """
    work = scratch / ("onnx2tf" if data is not None else "onnx2tf-float")
    work.mkdir(parents=True, exist_ok=True)
    src = work / onnx_path.name
    shutil.copyfile(onnx_path, src)
    write_sample_data(work, np.load(data.path, mmap_mode="r")[:20] if data is not None else sample)
    out = work / "tflite"
    log_path = work / "onnx2tf.log"
    stem = onnx_path.stem
    float_model, int8_model = out / f"{stem}_float32.tflite", out / f"{stem}_full_integer_quant.tflite"
    t0 = time.perf_counter()
    with capture_output(log_path, enabled=not settings.verbose), _chdir(work), _onnxsim_on_path() as has_sim:
        try:
            _run_onnx2tf(src, out, settings)
        except SystemExit as exc:  # onnx2tf calls sys.exit(1) on inputs it refuses
            raise DGHError(
                f"onnx2tf refused the model ({_last_error(log_path) or f'exit code {exc.code}'})",
                f"fix what the log names; full log: {_keep_log(log_path)}",
            ) from None
        except DGHError:
            raise
        except Exception as exc:  # any converter failure is reported the same way
            raise _conversion_error(exc, src, log_path) from exc
    if not float_model.is_file():
        raise DGHError(
            f"onnx2tf wrote no float32 .tflite ({_last_error(log_path) or 'no reason logged'})",
            f"read the full log: {_keep_log(log_path)}",
        )
    info: dict[str, Any] = {"onnxsim": has_sim, "onnx2tf_version": onnx2tf_version()}
    if data is not None:
        info.update(ranges_info(settings, quantize_saved_model(out, data, settings, int8_model, log_path)))
    return Conversion(float_model, int8_model, time.perf_counter() - t0, info)


def _run_onnx2tf(src: Path, out: Path, settings: ConversionSettings) -> None:
    """The float32 .tflite and the saved model (with its signature) in ``out``."""
    if not settings.verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # only effective before TensorFlow's first import
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):  # already initialised by an earlier conversion: keep it
        tf.config.threading.set_intra_op_parallelism_threads(settings.threads)
        tf.config.threading.set_inter_op_parallelism_threads(settings.threads)
    import onnx2tf

    onnx2tf.convert(
        input_onnx_file_path=str(src),
        output_folder_path=str(out),
        output_signaturedefs=True,  # the saved model's signature is what quantize_saved_model() converts
        verbosity="info" if settings.verbose else "warn",
    )


def quantize_saved_model(saved_model: Path, data: RepresentativeData, settings: ConversionSettings, path: Path,
                         log_path: Path) -> int:
    """The full-integer .tflite of onnx2tf's saved model, with the converter settings onnx2tf's own
    full-integer step uses (int8 builtins, per-channel unless per-tensor, batch-1 representative
    data normalised by the entry's mean and std), written to ``path``; activation ranges by
    ``settings.act_range`` (returned: how many tensors got the project's range in place of TensorFlow's)."""
    import tensorflow as tf

    images = np.load(data.path, mmap_mode="r")

    def representative() -> Iterator[list[Any]]:  # one input: by position, whatever its signature name
        for i in range(len(images)):
            yield [tf.cast(tf.convert_to_tensor((images[i : i + 1] - data.mean) / data.std), tf.float32)]

    io_type = {"int8": tf.int8, "uint8": tf.uint8}[settings.io_dtype]
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.SELECT_TF_OPS]
    converter._experimental_disable_per_channel = settings.quant_type == "per-tensor"  # onnx2tf sets it so too
    converter.unfold_batchmatmul = False
    converter.representative_dataset = representative
    converter.inference_input_type = converter.inference_output_type = io_type
    normalised = (np.asarray(images) - data.mean) / data.std
    with capture_output(log_path, enabled=not settings.verbose), \
            project_ranges(normalised, settings.act_range, settings.percentile, settings.output_headroom) as ranges:
        try:
            path.write_bytes(converter.convert())
        except Exception as exc:  # TensorFlow's quantizer refuses an op: say which, not where it failed
            raise DGHError(
                f"the TFLite converter could not write the full-integer .tflite ({int8_failure(exc)})",
                "replace the layer the reason names with an int8-friendly one; "
                f"full log: {_keep_log(log_path)}",
            ) from None
    return ranges["replaced"]


def ranges_info(settings: ConversionSettings, replaced: int) -> dict[str, Any]:
    """What the report says about the activation ranges."""
    info: dict[str, Any] = {"act_range": settings.act_range, "project_ranges": replaced,
                            "output_headroom": settings.output_headroom}
    if settings.act_range == "percentile":
        info["percentile"] = settings.percentile
    return info


def onnx2tf_version() -> str:
    return installed_version("onnx2tf")


# --- errors ------------------------------------------------------------------------------------


def _conversion_error(exc: BaseException, onnx_file: Path, log_path: Path) -> DGHError:
    """Name the ONNX op onnx2tf failed on (it tags the exception with the node name)."""
    node_name = getattr(exc, "onnx_op_name", None)
    if node_name:
        node_name = re.sub(r"^wa/", "/", str(node_name))  # onnx2tf prefixes 'wa' to names starting with '/'
    op_type = _op_type(onnx_file, node_name) if node_name else None
    missing = re.search(r"No module named 'onnx2tf\.ops\.(\w+)'", str(exc))
    reason = _first_line(exc)
    if missing:
        op_type = op_type or missing.group(1)
        reason = "onnx2tf has no converter for this op"
    what = f"{op_type} node '{node_name}'" if node_name and op_type else (op_type or node_name or "the model")
    return DGHError(
        f"onnx2tf cannot convert {what} ({reason})",
        f"replace that op with standard layers in the model (or its export_form); full log: {_keep_log(log_path)}",
    )


def _op_type(onnx_file: Path, node_name: str) -> str | None:
    try:
        import onnx

        graph = onnx.load(str(onnx_file), load_external_data=False).graph
    except Exception:  # best effort: the message still names the node
        return None
    clean = node_name.lstrip("/").replace(":", "__")
    for n in graph.node:
        if n.name == node_name or n.name.lstrip("/").replace(":", "__") == clean:
            return n.op_type
    return None


def _first_line(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    return (text.splitlines()[0][:200] if text else type(exc).__name__).rstrip(".")


def _read_log(log_path: Path) -> list[str]:
    try:
        return [_ANSI.sub("", ln).rstrip() for ln in log_path.read_text(errors="replace").splitlines()]
    except OSError:
        return []


def _last_error(log_path: Path) -> str:
    lines = [ln for ln in _read_log(log_path) if ln.startswith("ERROR:") and ln[6:].strip()]
    return lines[-1][6:].strip()[:200] if lines else ""


def int8_failure(exc: BaseException) -> str:
    """The line of the quantizer's exception that says what failed (TensorFlow's are many lines)."""
    lines = [_ANSI.sub("", ln).strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        m = _EXC_LINE.match(ln)
        if m:
            return f"{m.group(1)}: {m.group(2).strip()[:200]}"
    said = next((ln for ln in lines if "error:" in ln), lines[0] if lines else "no reason given")
    return f"{type(exc).__name__}: {said[:200]}"


def _keep_log(log_path: Path) -> str:
    """Copy the log out of the scratch folder (deleted after the build) so the user can read it."""
    if not log_path.is_file():
        return "not captured (verbose run: see the console)"
    fd, kept = tempfile.mkstemp(prefix="dgh-onnx2tf-", suffix=".log")
    os.close(fd)
    shutil.copyfile(log_path, kept)
    return kept


# --- process plumbing -----------------------------------------------------------------------------


@contextlib.contextmanager
def _chdir(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def _onnxsim_on_path() -> Iterator[bool]:
    bindir = str(Path(sys.executable).parent)
    old = os.environ.get("PATH", "")
    if (Path(bindir) / "onnxsim").exists() and bindir not in old.split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + old
    try:
        yield shutil.which("onnxsim") is not None
    finally:
        os.environ["PATH"] = old


class Onnx2tfConverter(Converter):
    """PyTorch -> ONNX (the project's exporter) -> onnx2tf; TensorFlow's converter quantizes its
    saved model on the calibration images, with the project's activation ranges (tf_ranges.py)."""

    name: ClassVar[str] = ONNX2TF
    requires: ClassVar[tuple[str, ...]] = ("onnx2tf", "tensorflow", "ai_edge_litert")
    install_hint: ClassVar[str] = ("pip install 'dgh-deploy[onnx2tf]' in a venv of its own (./install.sh --onnx2tf), "
                                   "or use the default converter, --converter litert-torch")
    act_ranges: ClassVar[tuple[str, ...]] = ACT_RANGES
    parity_fix: ClassVar[str] = ("onnx2tf mis-converts this graph: convert with --converter litert-torch (the "
                                 "default install, ./install.sh), or rewrite that layer into an equivalent form")

    def export(self, model: LoadedModel, module: nn.Module, scratch: Path) -> Path:
        return export_onnx(model, scratch / f"{file_stem(model.name)}.onnx", module=module)

    def convert_float(self, model: LoadedModel, module: nn.Module, scratch: Path) -> FloatModel:
        onnx_path = self.export(model, module, scratch)
        h, w = model.imgsz
        sample = np.random.default_rng(0).normal(size=(20, h, w, 3)).astype(np.float32)
        conv = convert(onnx_path, scratch, None, self.settings, sample=sample)
        return FloatModel(conv.float_model, conv.seconds, divergence_finder(onnx_path, conv.float_model), onnx_path)

    def calibrator(self, model: LoadedModel, scratch: Path, float_model: FloatModel | None = None) -> TFLiteCalibrator:
        return TFLiteCalibrator(scratch / "calibration_nhwc.npy", model.imgsz, INPUT_NAME)

    def quantize(self, model: LoadedModel, module: nn.Module, float_model: FloatModel | None,
                 data: RepresentativeData, scratch: Path) -> Conversion:
        """From the float conversion's saved model when there is one (the check before generation
        made it): only TensorFlow's quantizer runs, not onnx2tf again. Else both files from ONNX."""
        if float_model is not None and float_model.source is not None and saved_model_of(float_model.path):
            return self.quantize_float(float_model, data)
        source = float_model.source if float_model is not None else None
        return self.quantize_onnx(source if source is not None and source.is_file()
                                  else self.export(model, module, scratch), data, scratch)

    def quantize_float(self, float_model: FloatModel, data: RepresentativeData) -> Conversion:
        """The full-integer file of ``float_model``'s saved model, beside it."""
        assert float_model.source is not None
        folder = float_model.path.parent
        int8 = folder / float_model.path.name.replace("_float32.tflite", "_full_integer_quant.tflite")
        t0 = time.perf_counter()
        replaced = quantize_saved_model(folder, data, self.settings, int8, folder.parent / "onnx2tf.log")
        info = {"onnx2tf_version": onnx2tf_version(), "quant_type": self.settings.quant_type,
                "float_conversion": "reused from the check before generation", **ranges_info(self.settings, replaced)}
        return Conversion(float_model.path, int8, time.perf_counter() - t0, info, float_model.diagnose,
                          {"onnx": float_model.source})

    def quantize_onnx(self, onnx_path: Path, data: RepresentativeData, scratch: Path) -> Conversion:
        """Both files again from ``onnx_path``: onnx2tf writes the int8 file in the same run as a float one."""
        conv = convert(onnx_path, scratch, data, self.settings)
        conv.diagnose = divergence_finder(onnx_path, conv.float_model)
        conv.sources = {"onnx": onnx_path}
        conv.info["quant_type"] = self.settings.quant_type
        return conv


def saved_model_of(float_tflite: Path) -> bool:
    """Whether onnx2tf's saved model lies beside its float .tflite (it writes both in one folder)."""
    return (float_tflite.parent / "saved_model.pb").is_file()


def divergence_finder(onnx_path: Path, tflite_path: Path) -> Callable[[np.ndarray], str | None]:
    """One image -> the first layer where the float file stops agreeing with its ONNX source."""
    from dgh_deploy.targets.tflite.divergence import first_divergence

    def find(x: np.ndarray) -> str | None:
        div = first_divergence(onnx_path, tflite_path, x)
        return div.describe() if div is not None else None

    return find
