"""Calibration sets that need no optimisation: Gaussian noise and real images."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from dgh_deploy.errors import DGHError
from dgh_deploy.generation import draws
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.tasks.classify import IMAGE_SUFFIXES, evenly_spaced


def noise_images(model: LoadedModel, n_images: int, seed: int) -> tuple[np.ndarray, dict]:
    """N(0, 1) in the model's input space, clipped to the pixel range: the no-effort baseline."""
    t0 = time.perf_counter()
    x = draws.gaussian_images(seed, np.arange(n_images), (3, *model.imgsz))
    lo, hi = (torch.from_numpy(v).view(1, 3, 1, 1) for v in model.preprocessing.pixel_range())
    x = torch.clamp(x, lo, hi)
    return x.numpy(), {"time_s": round(time.perf_counter() - t0, 3)}


def list_images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def real_images(model: LoadedModel, folder: str, n_images: int) -> tuple[np.ndarray, dict, list[str]]:
    """``n_images`` images from ``folder`` (searched recursively), spread evenly over the
    sorted files so that an ImageFolder's classes are all represented."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DGHError(f"real-image folder '{folder}' not found", "pass --calib real:DIR with a folder of images")
    files = list_images(root)
    if len(files) < n_images:
        raise DGHError(
            f"'{folder}' holds {len(files)} images ({', '.join(IMAGE_SUFFIXES)}), fewer than the {n_images} asked for",
            f"add images or pass --n-images {len(files)} or less" if files else "point --calib real: at image files",
        )
    t0 = time.perf_counter()
    picked = [files[i] for i in evenly_spaced(len(files), n_images)]
    images = []
    for f in picked:
        try:
            images.append(model.preprocessing.load(str(f), model.imgsz))
        except Exception as exc:
            raise DGHError(f"cannot read image '{f}' ({type(exc).__name__})", "remove or replace the file") from exc
    rel = [str(f.relative_to(root)) for f in picked]
    return np.stack(images), {"time_s": round(time.perf_counter() - t0, 3)}, rel
