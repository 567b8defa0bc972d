"""TensorRT's calibration cache, and the one rule that turns a range into a TensorRT int8 scale.

The cache is ``TRT-<version>-EntropyCalibration2``, then ``tensor: hex`` with hex the big-endian
float32 bits of ``amax / 127``: TensorRT <= 10 reads the CPU ranges from it and skips its own
calibration. The Q/DQ model's scales come from the same :func:`amax_to_scale`.
"""

from __future__ import annotations

import importlib.metadata
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgh_deploy.artifacts import atomic_path
from dgh_deploy.errors import DGHError

CACHE_ALGORITHM = "EntropyCalibration2"
# Header version when tensorrt is not installed here: 10.7, the last TensorRT generation whose
# engines users commonly build with implicit INT8 (10.x deprecated it, 11.0 removed it).
DEFAULT_TRT_VERSION = "10.7.0"
_TRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11")



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
