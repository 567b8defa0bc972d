"""Ultralytics-style detection data: a data YAML, its image folders and YOLO-format labels."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgh_deploy.errors import DGHError
from dgh_deploy.tasks.classify import IMAGE_SUFFIXES

YAML_FIX = "pass a data YAML with 'val' (and optional 'path') as Ultralytics uses, e.g. coco128.yaml"


@dataclass
class DetectionData:
    """One split: image files and, per image, labels as rows ``class cx cy w h`` (normalised, float32)."""

    images: list[Path]
    labels: list[np.ndarray]
    names: tuple[str, ...]
    source: str


def read_data_yaml(path: str | Path, split: str = "val") -> DetectionData:
    """Read the ``split`` of an Ultralytics data YAML.

    ``split`` is a folder, a ``.txt`` list of images, or a list of those, relative to the YAML's
    ``path`` (itself relative to the YAML's folder; the folder when absent). Labels are found as
    Ultralytics finds them: the last ``/images/`` of each image path becomes ``/labels/``, ``.txt``.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise DGHError(f"data YAML '{path}' not found", "pass --val-data path/to/data.yaml")
    try:
        data = yaml.safe_load(p.read_text())
    except Exception as exc:
        raise DGHError(f"cannot parse data YAML '{path}' ({type(exc).__name__})", YAML_FIX) from exc
    if not isinstance(data, dict) or not data.get(split):
        raise DGHError(f"data YAML '{path}' has no '{split}' entry", YAML_FIX)
    root = p.parent / str(data.get("path") or ".")
    names = _names(data.get("names"), path)
    entries = data[split] if isinstance(data[split], list) else [data[split]]
    images: list[Path] = []
    for entry in entries:
        images += _list_images(root / str(entry), path, split)
    if not images:
        raise DGHError(f"no images in the '{split}' split of '{path}' ({root / str(entries[0])})", YAML_FIX)
    label_files = [_label_path(f) for f in images]
    label_dirs = {f.parent for f in label_files}
    missing_dirs = sorted(d for d in label_dirs if not d.is_dir())
    if missing_dirs:
        raise DGHError(
            f"labels folder '{missing_dirs[0]}' for the '{split}' images of '{path}' not found",
            "put YOLO-format labels (class cx cy w h per line, one .txt per image) in the labels/ folder "
            "beside images/",
        )
    labels = [_read_labels(f) for f in label_files]
    if not any(len(lab) for lab in labels):
        raise DGHError(
            f"no labelled objects for the '{split}' images of '{path}' (looked in '{sorted(label_dirs)[0]}')",
            "put one YOLO-format .txt per image in the labels/ folder beside images/",
        )
    for f, lab in zip(label_files, labels, strict=True):
        if len(lab) and (lab[:, 0].max() >= len(names) or lab[:, 0].min() < 0):
            raise DGHError(
                f"label file '{f}' has class {int(lab[:, 0].max())} but '{path}' names {len(names)} classes",
                "fix the labels or the 'names' in the data YAML",
            )
    return DetectionData(images, labels, names, str(path))


def _names(raw: object, path: str | Path) -> tuple[str, ...]:
    if isinstance(raw, dict):
        return tuple(str(raw[k]) for k in sorted(raw))
    if isinstance(raw, list):
        return tuple(str(n) for n in raw)
    raise DGHError(f"data YAML '{path}' has no 'names' list or mapping", YAML_FIX)


def _list_images(where: Path, path: str | Path, split: str) -> list[Path]:
    if where.suffix == ".txt" and where.is_file():
        base = where.parent
        files = [base / line.strip() for line in where.read_text().splitlines() if line.strip()]
        return [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
    if not where.is_dir():
        raise DGHError(f"images folder '{where}' for the '{split}' split of '{path}' not found",
                       "check 'path' and the split entry in the data YAML")
    return sorted(f for f in where.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)


def _label_path(image: Path) -> Path:
    s = image.as_posix()
    i = s.rfind("/images/")
    if i < 0:
        return image.with_suffix(".txt")  # no images/ folder in the path: labels sit beside the images
    return Path(s[:i] + "/labels/" + s[i + len("/images/") :]).with_suffix(".txt")


def _read_labels(f: Path) -> np.ndarray:
    """Rows ``class cx cy w h``; polygon rows (``class x1 y1 x2 y2 ...``) become their bounding boxes."""
    if not f.is_file():
        return np.zeros((0, 5), np.float32)  # an image without a label file has no objects
    rows = []
    for line in f.read_text().splitlines():
        v = line.split()
        if not v:
            continue
        try:
            nums = [float(t) for t in v]
        except ValueError as exc:
            raise DGHError(f"label file '{f}' has a non-numeric line: '{line[:60]}'",
                           "use YOLO format: class cx cy w h, normalised") from exc
        if len(nums) == 5:
            rows.append(nums)
        elif len(nums) > 5 and len(nums) % 2 == 1:
            xy = np.asarray(nums[1:]).reshape(-1, 2)
            (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
            rows.append([nums[0], (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
        else:
            raise DGHError(f"label file '{f}' has a line with {len(nums)} values: '{line[:60]}'",
                           "use YOLO format: class cx cy w h, normalised")
    return np.asarray(rows, np.float32).reshape(-1, 5)
