"""TensorRT calibration from a :class:`CalibrationSet`: CPU activation ranges, TensorRT's cache, its calibrator.

* :class:`TensorRTCalibrator` runs the float ONNX model on ONNX Runtime's CPU, batch by
  batch, with every tensor that needs a range added as a graph output, and feeds one
  :class:`~dgh_deploy.calibration.entropy.AbsHistogram` per tensor (no activation is kept
  past its batch).
* :func:`write_calibration_cache` / :func:`read_calibration_cache`: TensorRT's calibration
  cache (``TRT-<version>-EntropyCalibration2``, then ``tensor: hex`` with hex the big-endian
  float32 bits of ``amax / 127``), so TensorRT <= 10 reads the CPU ranges and skips its own
  calibration.
* :meth:`TensorRTCalibrator.trt_calibrator`: a ``tensorrt.IInt8EntropyCalibrator2`` that serves
  the same set to TensorRT <= 10 (only where ``tensorrt`` imports; TensorRT 11 removed it).
"""

from __future__ import annotations

import importlib.metadata
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgh_deploy.artifacts import atomic_path
from dgh_deploy.calibration.calibration_set import CalibrationSet
from dgh_deploy.calibration.calibrator import Calibrator
from dgh_deploy.calibration.entropy import AbsHistogram
from dgh_deploy.errors import DGHError

CACHE_ALGORITHM = "EntropyCalibration2"
# Header version when tensorrt is not installed here: 10.7, the last TensorRT generation whose
# engines users commonly build with implicit INT8 (10.x deprecated it, 11.0 removed it).
DEFAULT_TRT_VERSION = "10.7.0"
_TRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11")


class TensorRTCalibrator(Calibrator):
    """Serves a calibration set (NCHW float32, model input space) to TensorRT-style calibration."""

    layout = "NCHW"

    def __init__(self, calib: CalibrationSet, batch_size: int = 16) -> None:
        super().__init__(calib, batch_size)

    def feed(self, **kwargs: Any) -> dict[str, AbsHistogram]:
        """``feed(onnx_model=..., tensors=[...], threads=2)``: one |x| histogram per tensor name."""
        return self.collect(kwargs["onnx_model"], kwargs["tensors"], int(kwargs.get("threads", 2)))

    def collect(self, onnx_model: Any, tensors: list[str], threads: int = 2) -> dict[str, AbsHistogram]:
        """Run ``onnx_model`` (a path or ModelProto, float) on ORT CPU and histogram ``tensors``."""
        from dgh_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner(_with_outputs(onnx_model, tensors), threads)
        index = {name: i for i, name in enumerate(runner.output_names)}
        hists = {name: AbsHistogram() for name in tensors}
        for batch in self.batches():
            outs = runner.infer(batch)
            for name, hist in hists.items():
                hist.collect(outs[index[name]], name)
        return hists

    def trt_calibrator(self, cache: str | Path | None = None) -> Any:
        """A ``tensorrt.IInt8EntropyCalibrator2`` over this set; reads/writes ``cache`` if given."""
        return entropy_calibrator2_class()(self, cache)


def _with_outputs(onnx_model: Any, tensors: list[str]) -> bytes:
    """The model with ``tensors`` added as float outputs, serialised for ORT."""
    import onnx

    model = onnx.load(str(onnx_model)) if isinstance(onnx_model, (str, Path)) else onnx_model
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    present = {o.name for o in augmented.graph.output}
    for name in tensors:
        if name not in present:
            augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return augmented.SerializeToString()


# --------------------------------------------------------------------------- the cache


@dataclass(frozen=True)
class CalibrationCache:
    """A parsed TensorRT calibration cache: header parts and ``tensor -> scale`` (amax / 127)."""

    version: int
    algorithm: str
    scales: dict[str, float]

    def amax(self) -> dict[str, float]:
        return {name: scale * 127.0 for name, scale in self.scales.items()}


def positive_amax(a: float) -> float:
    """TensorRT needs scales > 0: a range of 0 (only zeros seen) becomes 1.0, which still maps 0 to 0 exactly."""
    a = float(a)
    return a if a > 0.0 and np.isfinite(a) else 1.0


def amax_to_scale(amax: float | np.ndarray) -> np.ndarray:
    """The int8 scale TensorRT uses, ``amax / 127`` in float32: one rule for Q/DQ nodes and the cache."""
    a = np.vectorize(positive_amax, otypes=[np.float64])(np.asarray(amax, dtype=np.float64))
    return (a / 127.0).astype(np.float32)


def tensorrt_version() -> str | None:
    """The installed TensorRT's version from package metadata (no import: it may need CUDA), or None."""
    for dist in _TRT_DISTRIBUTIONS:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def version_code(version: str) -> int:
    """TensorRT's number in cache headers: 8.2.3 -> 8203, 10.7.0 -> 100700 (NV_TENSORRT_VERSION)."""
    parts = [int(p) for p in [*version.split("."), "0", "0"][:3] if p.isdigit()]
    if len(parts) != 3:
        raise DGHError(f"TensorRT version '{version}' is not MAJOR.MINOR.PATCH", "pass e.g. 10.7.0")
    major, minor, patch = parts
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def scale_to_hex(scale: float) -> str:
    """float32 bits, big-endian, lowercase hex without 0x or leading zeros (TensorRT's own form)."""
    return format(struct.unpack(">I", struct.pack(">f", scale))[0], "x")


def hex_to_scale(text: str) -> float:
    return float(struct.unpack(">f", bytes.fromhex(text.strip().zfill(8)))[0])


def write_calibration_cache(path: str | Path, amax: dict[str, float], version: str | None = None) -> str:
    """Write ``tensor -> amax`` as TensorRT's cache at ``path``; return the header line.

    Scales come from :func:`amax_to_scale`, as the Q/DQ model's do, so no line is ``0`` (TensorRT needs scales > 0,
    and ModelOpt's reader needs an even number of hex digits).
    """
    header = f"TRT-{version_code(version or tensorrt_version() or DEFAULT_TRT_VERSION)}-{CACHE_ALGORITHM}"
    lines = [header]
    for name, a in amax.items():
        # PyTorch names like "onnx::Conv_12" are fine: readers split at the last colon.
        if "\n" in name or not name.strip():
            raise DGHError(f"tensor name '{name}' cannot be written to a TensorRT cache", "rename the tensor")
        lines.append(f"{name}: {scale_to_hex(float(amax_to_scale(a)))}")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return header


def read_calibration_cache(path: str | Path) -> CalibrationCache:
    p = Path(path)
    lines = p.read_text().splitlines() if p.is_file() else []
    head = lines[0].split("-") if lines else []
    if len(head) != 3 or head[0] != "TRT" or not head[1].isdigit():
        raise DGHError(
            f"'{path}' is not a TensorRT calibration cache", "pass a cache whose first line is TRT-<version>-<algo>"
        )
    scales: dict[str, float] = {}
    for line in lines[1:]:
        if line.strip():
            name, _, value = line.rpartition(":")
            scales[name.strip()] = hex_to_scale(value)
    return CalibrationCache(int(head[1]), head[2], scales)


# --------------------------------------------------------------------------- TensorRT <= 10


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except Exception as exc:  # ImportError, or a CUDA loader error on a machine without a driver
        raise DGHError(
            f"TensorRT is not usable here ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            "install tensorrt on a machine with an NVIDIA GPU, or build the engine there with build_engine.sh",
        ) from exc
    return tensorrt


_CALIBRATOR_CLASS: type | None = None


def entropy_calibrator2_class() -> type:
    """The ``IInt8EntropyCalibrator2`` subclass, defined on first use (it needs tensorrt <= 10)."""
    global _CALIBRATOR_CLASS
    if _CALIBRATOR_CLASS is not None:
        return _CALIBRATOR_CLASS
    trt = import_tensorrt()
    base = getattr(trt, "IInt8EntropyCalibrator2", None)
    if base is None:
        raise DGHError(
            f"TensorRT {getattr(trt, '__version__', '?')} has no implicit INT8 calibration (removed in 11)",
            "build the explicit Q/DQ model instead: trtexec --onnx=model_qdq.onnx --stronglyTyped",
        )

    class EntropyCalibrator2(base):  # type: ignore[misc, valid-type]
        """Feeds TensorRT one full batch at a time; a short last batch is dropped, as TensorRT needs."""

        def __init__(self, source: TensorRTCalibrator, cache: str | Path | None) -> None:
            base.__init__(self)  # TensorRT's binding crashes later without this explicit call
            self.source = source
            self.cache = Path(cache) if cache is not None else None
            self._batches: Iterator[np.ndarray] = source.batches()
            self._device: Any = None

        def get_batch_size(self) -> int:
            return self.source.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None or len(batch) != self.source.batch_size:
                return None
            return [self._to_device(np.ascontiguousarray(batch, dtype=np.float32))]

        def _to_device(self, batch: np.ndarray) -> int:
            from polygraphy import cuda

            if self._device is None:
                self._device = cuda.DeviceArray(shape=batch.shape, dtype=np.float32)
            self._device.copy_from(batch)
            return int(self._device.ptr)

        def read_calibration_cache(self) -> bytes | None:
            if self.cache is not None and self.cache.is_file():
                return self.cache.read_bytes()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            if self.cache is not None:
                with atomic_path(self.cache) as tmp:
                    tmp.write_bytes(bytes(memoryview(cache)))

    _CALIBRATOR_CLASS = EntropyCalibrator2
    return EntropyCalibrator2
