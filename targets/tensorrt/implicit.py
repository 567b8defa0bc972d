"""TensorRT <= 10's implicit INT8 calibration: an ``IInt8EntropyCalibrator2`` over a calibration set.

Only where ``tensorrt`` imports (a GPU machine); TensorRT 11 removed implicit calibration, and the
Q/DQ model is the path there. The class is defined on first use, since its base class comes from
``tensorrt`` itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dgh_deploy.artifacts import atomic_path
from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.errors import DGHError


def entropy_calibrator(calib: CalibrationSet, batch_size: int, cache: str | Path | None = None) -> Any:
    """A ``tensorrt.IInt8EntropyCalibrator2`` serving ``calib`` (NCHW float32); reads/writes ``cache`` if given."""
    return entropy_calibrator2_class()(calib, batch_size, cache)



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

        def __init__(self, calib: CalibrationSet, batch_size: int, cache: str | Path | None) -> None:
            base.__init__(self)  # TensorRT's binding crashes later without this explicit call
            self.batch_size = batch_size
            self.cache = Path(cache) if cache is not None else None
            self._batches: Iterator[np.ndarray] = calib.batches(batch_size)
            self._device: Any = None

        def get_batch_size(self) -> int:
            return self.batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None or len(batch) != self.batch_size:
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
