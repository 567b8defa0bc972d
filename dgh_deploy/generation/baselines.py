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


DATA_YAML_SUFFIXES = (".yaml", ".yml")


def is_data_yaml(target: str) -> bool:
    """``real:TARGET`` names an Ultralytics data YAML (calibrate on its train split), else a folder."""
    return Path(target).suffix.lower() in DATA_YAML_SUFFIXES and not Path(target).is_dir()


def real_images(model: LoadedModel, folder: str, n_images: int) -> tuple[np.ndarray, dict, list[str]]:
    """``n_images`` images from ``folder`` (searched recursively), spread evenly over the
    sorted files so that an ImageFolder's classes are all represented."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DGHError(f"real-image folder '{folder}' not found",
                       "pass --calib real:DIR with a folder of images, or real:DATA.yaml")
    files = list_images(root)
    _check_count(len(files), n_images, f"'{folder}' holds {len(files)} images ({', '.join(IMAGE_SUFFIXES)})",
                 "point --calib real: at image files")
    t0 = time.perf_counter()
    picked = [files[i] for i in evenly_spaced(len(files), n_images)]
    images = _load_all(model, picked)
    rel = [str(f.relative_to(root)) for f in picked]
    return images, {"time_s": round(time.perf_counter() - t0, 3)}, rel


def real_images_from_data(model: LoadedModel, data_yaml: str, n_images: int,
                          seed: int) -> tuple[np.ndarray, dict, list[str]]:
    """``n_images`` images drawn at random (seeded) from the train split of an Ultralytics data YAML.

    The train split, not val: the job measures mAP on val, and calibration images must not be
    among the images the verdict is measured on. Files are listed as Ultralytics lists them.
    """
    from dgh_deploy.tasks.detect_data import resolve_data_yaml, split_images

    data = resolve_data_yaml(data_yaml, "train", usage="--calib real:path/to/data.yaml")
    files = split_images(data, "train")
    _check_count(len(files), n_images, f"the train split of '{data_yaml}' holds {len(files)} images",
                 "point --calib real: at a data YAML whose train split has images")
    t0 = time.perf_counter()
    pick = np.sort(np.random.default_rng(seed).choice(len(files), size=n_images, replace=False))
    picked = [files[i] for i in pick]
    images = _load_all(model, picked)
    rel = [str(f.relative_to(data.root)) if f.is_relative_to(data.root) else str(f) for f in picked]
    return images, {"time_s": round(time.perf_counter() - t0, 3)}, rel


def _check_count(found: int, wanted: int, holds: str, fix_if_none: str) -> None:
    if found < wanted:
        raise DGHError(f"{holds}, fewer than the {wanted} asked for",
                       f"add images or pass --n-images {found} or less" if found else fix_if_none)


def _load_all(model: LoadedModel, files: list[Path]) -> np.ndarray:
    """The files as model input, through the one image reader (EXIF-aware, one error line per bad file)."""
    return np.stack([model.preprocessing.load(f, model.imgsz) for f in files])
