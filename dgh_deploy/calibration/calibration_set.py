"""The calibration-set file format: ``images`` (N x 3 x H x W float32) plus JSON metadata."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dgh_deploy.artifacts import atomic_path
from dgh_deploy.errors import DGHError

FORMAT_VERSION = 1


@dataclass
class CalibrationSet:
    images: np.ndarray  # N x 3 x H x W float32, model input space
    source: str  # dgh | bns | noise | real:PATH
    settings: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)  # timings, losses, ...

    def __post_init__(self) -> None:
        self.images = np.ascontiguousarray(self.images, dtype=np.float32)
        if self.images.ndim != 4 or self.images.shape[1] != 3 or len(self.images) == 0:
            raise DGHError(
                f"calibration images have shape {tuple(self.images.shape)}, not N x 3 x H x W with N > 0",
                "regenerate the set with 'dgh-deploy generate' for this model",
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def imgsz(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def batches(self, batch_size: int, layout: str = "NCHW") -> Iterator[np.ndarray]:
        for i in range(0, len(self), batch_size):
            b = self.images[i : i + batch_size]
            yield np.ascontiguousarray(b.transpose(0, 2, 3, 1)) if layout == "NHWC" else b

    def split(self, n_holdout: int) -> tuple[CalibrationSet, CalibrationSet | None]:
        """The last ``n_holdout`` images go to a held-out set (for the data-free check)."""
        n_holdout = min(max(n_holdout, 0), len(self) - 1)
        if n_holdout == 0:
            return self, None
        keep = len(self) - n_holdout
        calib = CalibrationSet(self.images[:keep], self.source, dict(self.settings), dict(self.stats))
        held = CalibrationSet(self.images[keep:], self.source, dict(self.settings))
        return calib, held

    def check_fits(self, imgsz: tuple[int, int]) -> None:
        if self.imgsz != tuple(imgsz):
            raise DGHError(
                f"calibration images are {self.imgsz[0]}x{self.imgsz[1]} but the model takes {imgsz[0]}x{imgsz[1]}",
                "generate the calibration set at the model's --imgsz",
            )

    def save(self, path: str | Path) -> None:
        meta = {"format_version": FORMAT_VERSION, "source": self.source, "settings": self.settings,
                "stats": self.stats, "images_sha256": images_digest(self.images)}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, images=self.images, metadata=np.array(json.dumps(meta, default=str)))

    @classmethod
    def load(cls, path: str | Path) -> CalibrationSet:
        p = Path(path)
        if not p.is_file():
            raise DGHError(f"calibration file '{path}' not found", "check the path or run 'dgh-deploy generate'")
        try:
            with np.load(p, allow_pickle=False) as z:
                images = z["images"]
                meta = json.loads(str(z["metadata"])) if "metadata" in z else {}
        except Exception as exc:  # truncated, not a zip, not our arrays: unusable either way
            raise DGHError(
                f"cannot read calibration file '{path}' ({type(exc).__name__})",
                "pass an .npz written by 'dgh-deploy generate'",
            ) from exc
        digest = meta.get("images_sha256")
        if digest is not None and digest != images_digest(images):
            raise DGHError(f"calibration file '{path}' is corrupt (its images do not match their checksum)",
                           "generate it again")
        return cls(images, meta.get("source", "file"), meta.get("settings", {}), meta.get("stats", {}))


def images_digest(images: np.ndarray) -> str:
    """SHA-256 of the image bytes: a flipped bit in a stored set is found, not calibrated on."""
    return hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes()).hexdigest()
