"""Checks of a job's inputs that run before any work: the first seconds are the only place bad input may be found.

Each check raises :class:`~dgh_deploy.errors.DGHError` with one line naming the problem and the
fix. Numbers, paths, the output folder's writability and the free disk space are checked here;
the model (it loads and runs one forward) and the target's options are checked by their owners.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from dgh_deploy.errors import DGHError

log = logging.getLogger("dgh_deploy")

# option -> (smallest value, what it counts); None values mean "the default" and are not checked.
MINIMUMS: dict[str, tuple[float, str]] = {
    "n_images": (1, "calibration images"),
    "iters": (1, "iterations"),
    "imgsz": (1, "pixels"),
    "val_limit": (1, "validation images"),
    "threads": (1, "threads"),
    "holdout": (0, "held-out images"),
    "seed": (0, "a seed"),
    "max_drop": (0, "points"),
}
DISK_MARGIN = 64 * 1024 * 1024  # logs, temporary files of the converters


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_numbers(values: Mapping[str, float | None]) -> None:
    """Every numeric option within its range (see :data:`MINIMUMS`)."""
    for name, value in values.items():
        if value is None or name not in MINIMUMS:
            continue
        low, unit = MINIMUMS[name]
        if value < low:
            raise DGHError(f"{flag(name)} {value:g} is out of range: it counts {unit}",
                           f"pass {flag(name)} {low:g} or more" + (", or leave it out for the default"
                                                                   if name != "max_drop" else ""))


def check_exists(path: str, option: str, kind: str = "any") -> Path:
    """``path`` exists, is of ``kind`` (file, folder or any) and can be read."""
    p = Path(path)
    if not p.exists():
        raise DGHError(f"{option} '{path}' not found", f"check the {option} path")
    if kind == "file" and not p.is_file():
        raise DGHError(f"{option} '{path}' is not a file", f"pass a file to {option}")
    if kind == "folder" and not p.is_dir():
        raise DGHError(f"{option} '{path}' is not a folder", f"pass a folder to {option}")
    if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0)):
        raise DGHError(f"{option} '{path}' cannot be read (permission denied)", "fix its permissions")
    return p


def check_calibration_source(calib: str) -> None:
    """The ``--calib`` form is known, and a file or folder it names is there."""
    if calib in ("dgh", "bns", "noise"):
        return
    if calib.startswith("real:"):
        target = calib.split(":", 1)[1]
        check_exists(target, "--calib real:", "any")
        check_real_images(target)
        return
    if calib.endswith(".npz"):
        check_exists(calib, "--calib", "file")
        return
    raise DGHError(f"unknown calibration source '{calib}'",
                   "use --calib dgh, bns, noise, real:FOLDER, real:DATA.yaml or a FILE.npz from 'dgh-deploy generate'")


def check_real_images(target: str) -> None:
    """``--calib real:TARGET`` holds images: a folder some image files, a data YAML its train
    split's. Checked before the model loads: the count the job needs is checked once it has."""
    from dgh_deploy.generation.baselines import is_data_yaml, list_images

    if is_data_yaml(target):
        check_yaml_split(target, "train", "--calib real:path/to/data.yaml")
    elif Path(target).is_dir() and not list_images(Path(target)):
        raise DGHError(f"--calib real:{target} holds no image files",
                       "point --calib real: at a folder of images (searched recursively) or a data YAML")


def check_val_data_yaml(val_data: str) -> None:
    """A data YAML given to ``--val-data`` names a val split whose images are there: checked before
    the model loads (a folder's form depends on the task, so the task checks it once it is known)."""
    from dgh_deploy.generation.baselines import is_data_yaml

    if is_data_yaml(val_data):
        check_yaml_split(val_data, "val", "--val-data path/to/data.yaml")
    elif Path(val_data).is_file():
        raise DGHError(f"--val-data '{val_data}' is a file, neither an image folder nor a data YAML",
                       "pass an ImageFolder (classify) or an Ultralytics data YAML (detect)")


def check_yaml_split(path: str, split: str, usage: str) -> None:
    """A data YAML's ``split`` resolves (offline, as Ultralytics reads it) to a folder of images."""
    from dgh_deploy.tasks.detect_data import resolve_data_yaml, split_images

    split_images(resolve_data_yaml(path, split, usage), split)


def nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(folder: str | Path, option: str) -> None:
    """A probe file can be made and removed where ``folder`` is (or would be created)."""
    base = nearest_existing(Path(folder))
    if not base.is_dir():
        raise DGHError(f"{option} '{folder}' lies under '{base}', which is a file", f"pass another {option}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".dgh-deploy-probe.", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DGHError(f"{option} '{folder}' cannot be written ({exc.strerror or type(exc).__name__} in '{base}')",
                       f"pass an {option} in a folder you can write to") from exc


def check_free_space(folder: str | Path, need_bytes: int, what: str, option: str) -> None:
    free = shutil.disk_usage(nearest_existing(Path(folder))).free
    if free < need_bytes + DISK_MARGIN:
        raise DGHError(f"not enough free disk for {what}: about {_mib(need_bytes + DISK_MARGIN)} needed, "
                       f"{_mib(free)} free under '{folder}'",
                       f"free some space, or pass an {option} on another disk")


def job_bytes(images: int, imgsz: tuple[int, int], parameters: int) -> tuple[int, int]:
    """(calibration-set bytes, artifact bytes), both generous estimates.

    The set is float32; generation keeps a checkpoint with the images held larger than the
    input and the optimiser's two moments (about four sets). Artifacts: the float ONNX and
    .tflite, the int8 file and pictures: about three float copies of the weights.
    """
    one_set = images * 3 * imgsz[0] * imgsz[1] * 4
    return 5 * one_set, 3 * 4 * parameters + 8 * 1024 * 1024


def usable_cache_dir(folder: Path) -> Path | None:
    """``folder``, created if need be, if the cache can be written there; else None with one
    warning (the job runs uncached)."""
    try:
        check_writable_folder(folder, "--cache-dir")
        folder.mkdir(parents=True, exist_ok=True)
    except (DGHError, OSError) as err:
        reason = err.problem if isinstance(err, DGHError) else f"cannot create '{folder}' ({err.strerror})"
        log.warning("dgh-deploy: warning: not caching the calibration set: %s", reason)
        return None
    return folder


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"
