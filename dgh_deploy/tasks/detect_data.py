"""Ultralytics detection data: a data YAML resolved by Ultralytics' own resolver, its images and YOLO labels.

``path:`` and the splits mean what they mean to ``yolo val``: the YAML goes through
``ultralytics.data.utils.check_det_dataset`` (never downloading), images are listed as Ultralytics'
datasets list them and paired with labels by its ``img2label_paths``. Labels ``yolo val`` would skip
as corrupt are refused here instead, one line each, so both score the same images.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import yaml

from dgh_deploy.errors import DGHError
from dgh_deploy.ultralytics_quiet import quiet_ultralytics

YAML_FIX = "pass a data YAML with 'val' (and optional 'path') as Ultralytics uses, e.g. coco128.yaml"
LABEL_FIX = "fix the label file, or remove it with its image (yolo val skips such images)"
SPLIT_KEYS = ("train", "val", "test")


@dataclass
class DetectionData:
    """One split: image files and, per image, labels as rows ``class cx cy w h`` (normalised, float32)."""

    images: list[Path]
    labels: list[np.ndarray]
    names: tuple[str, ...]
    source: str


@dataclass(frozen=True)
class DataYaml:
    """A data YAML as Ultralytics resolves it.

    ``root``: the dataset folder ``path:`` names. ``splits``: per split given, its absolute entries
    (image folders or text files listing images).
    """

    source: str
    root: Path
    names: tuple[str, ...]
    splits: dict[str, list[Path]]


def read_data_yaml(path: str | Path, split: str = "val") -> DetectionData:
    """The images and labels of the ``split`` of an Ultralytics data YAML, as ``yolo val`` reads them."""
    data = resolve_data_yaml(path, split)
    images = split_images(data, split)
    from ultralytics.data.utils import img2label_paths

    label_files = [Path(f) for f in img2label_paths([str(f) for f in images])]
    label_dirs = {f.parent for f in label_files}
    missing_dirs = sorted(d for d in label_dirs if not d.is_dir())
    if missing_dirs:
        raise DGHError(
            f"labels folder '{missing_dirs[0]}' for the '{split}' images of '{path}' not found",
            "put YOLO-format labels (class cx cy w h per line, one .txt per image) in the labels/ folder "
            "beside images/",
        )
    labels = [read_labels(f) for f in label_files]
    if not any(len(lab) for lab in labels):
        raise DGHError(
            f"no labelled objects for the '{split}' images of '{path}' (looked in '{sorted(label_dirs)[0]}')",
            "put one YOLO-format .txt per image in the labels/ folder beside images/",
        )
    for f, lab in zip(label_files, labels, strict=True):
        if len(lab) and lab[:, 0].max() >= len(data.names):
            raise DGHError(
                f"label file '{f}' has class {int(lab[:, 0].max())} but '{path}' names {len(data.names)} classes",
                "fix the labels or the 'names' in the data YAML",
            )
    return DetectionData(images, labels, data.names, str(path))


# -- the YAML ------------------------------------------------------------------------------------


def resolve_data_yaml(path: str | Path, split: str = "val", usage: str = "--val-data path/to/data.yaml") -> DataYaml:
    """Resolve a data YAML with Ultralytics' ``check_det_dataset``, offline and quietly.

    ``path:`` is taken as Ultralytics takes it: relative to the working folder, else to Ultralytics'
    datasets folder; absent, the YAML's folder. ``nc:`` and ``names`` (list or mapping) give the
    classes. The ``split`` must be there and exist; a dataset that is not there is an error, never a
    download. Every failure is one :class:`DGHError` line; ``usage`` is how the user passes a YAML.
    """
    file = Path(path)
    if not file.is_file():
        raise DGHError(f"data YAML '{path}' not found", f"pass {usage}")
    raw = _parse(file, path)
    if not raw.get(split) and not (split == "val" and raw.get("validation")):
        raise DGHError(f"data YAML '{path}' has no '{split}' entry", YAML_FIX)
    with quiet_ultralytics(), _with_train(file, raw, split) as target:
        data = _check_det_dataset(target, path, split)
    names = data["names"]
    splits = {k: [Path(x) for x in (data[k] if isinstance(data[k], list) else [data[k]])]
              for k in SPLIT_KEYS if data.get(k)}
    return DataYaml(str(path), Path(data["path"]).resolve(), tuple(names[i] for i in range(len(names))), splits)


def _parse(file: Path, path: str | Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DGHError(f"cannot parse data YAML '{path}' ({type(exc).__name__})", YAML_FIX) from exc
    if not isinstance(raw, dict):
        raise DGHError(f"data YAML '{path}' is not a mapping of keys (path, train, val, names)", YAML_FIX)
    return raw


@contextlib.contextmanager
def _with_train(file: Path, raw: dict[str, Any], split: str) -> Iterator[Path]:
    """The YAML, or a copy with ``train`` added for a YAML without one.

    Ultralytics requires ``train`` in every data YAML; a YAML made only to validate on has none,
    and reading its ``val`` needs none. The copy sits elsewhere, so it names its dataset folder
    explicitly (where Ultralytics would take the YAML's own folder); everything else is unchanged.
    """
    if raw.get("train"):
        yield file
        return
    root = raw.get("path") or str(file.parent.absolute())
    copy = {**raw, "train": raw.get(split) or raw.get("validation"), "path": root}
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / file.name
        target.write_text(yaml.safe_dump(copy, sort_keys=False))
        yield target


def _no_font(*args: object, **kwargs: object) -> None:
    return None


def _check_det_dataset(target: Path, path: str | Path, split: str) -> dict[str, Any]:
    from ultralytics.data import utils as ultralytics_data

    try:
        # check_det_dataset ends by fetching a font for plots from the network; nothing here plots.
        with mock.patch.object(ultralytics_data, "check_font", _no_font):
            return ultralytics_data.check_det_dataset(str(target), autodownload=False, split=split)
    except FileNotFoundError as exc:
        found = re.search(r"missing path '([^']+)'", str(exc))
        where = f"'{found.group(1)}'" if found else f"({_reason(exc, target)})"
        raise DGHError(
            f"images folder {where} for the '{split}' split of '{path}' not found",
            f"check 'path' and '{split}' in the data YAML: as in Ultralytics, a relative 'path' is taken from the "
            f"working folder, else from Ultralytics' datasets folder '{ultralytics_data.DATASETS_DIR}'; nothing is "
            "downloaded",
        ) from exc
    except (SyntaxError, TypeError, KeyError, ValueError, yaml.YAMLError) as exc:
        raise DGHError(f"data YAML '{path}': {_reason(exc, target)}", YAML_FIX) from exc


def _reason(exc: BaseException, target: Path) -> str:
    """Ultralytics' message on one line, without the YAML's name it starts with or its emojis."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)  # str(KeyError) adds quotes
    line = " ".join(text.split()) or type(exc).__name__
    line = line.removeprefix(str(target)).encode("ascii", "ignore").decode()
    return re.sub(r"\s+([.,])", r"\1", line).strip()


# -- images and labels -----------------------------------------------------------------------------


def split_images(data: DataYaml, split: str) -> list[Path]:
    """The image files of a split, found as Ultralytics' datasets find them.

    A folder gives every image under it; a text file gives its lines (``./`` lines relative to the
    file, others as written, so relative to the working folder). Kept: files whose suffix is one of
    Ultralytics' image formats, sorted by path.
    """
    from ultralytics.data.utils import IMG_FORMATS

    found: list[str] = []
    for entry in data.splits.get(split, []):
        found += _entry_files(entry, data, split)
    images = sorted(f for f in found if f.rpartition(".")[-1].lower() in IMG_FORMATS)
    if not images:
        raise DGHError(
            f"no images in the '{split}' split of '{data.source}' ({', '.join(map(str, data.splits.get(split, [])))})",
            f"put images ({', '.join(sorted(IMG_FORMATS))}) in the folder, or list them in the text file",
        )
    missing = [f for f in images if not os.path.isfile(f)]
    if missing:
        raise DGHError(
            f"the '{split}' split of '{data.source}' lists {len(missing)} image(s) that do not exist, "
            f"e.g. '{missing[0]}'",
            "fix the list: as in Ultralytics, lines starting with './' are relative to the list file, "
            "others to the working folder",
        )
    return [Path(f) for f in images]


def _entry_files(entry: Path, data: DataYaml, split: str) -> list[str]:
    if entry.is_dir():
        return glob.glob(str(Path(glob.escape(str(entry))) / "**" / "*.*"), recursive=True)
    if not entry.is_file():
        raise DGHError(f"images folder '{entry}' for the '{split}' split of '{data.source}' not found",
                       "check 'path' and the split entry in the data YAML")
    try:
        lines = entry.read_text(encoding="utf-8-sig").strip().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DGHError(f"'{entry}' (the '{split}' split of '{data.source}') is neither a folder nor a text "
                       "list of images", "name a folder of images or a .txt file with one image path per line") from exc
    parent = str(entry.parent) + os.sep
    return [line.replace("./", parent, 1) if line.startswith("./") else line for line in lines]


def read_labels(f: Path) -> np.ndarray:
    """Rows ``class cx cy w h`` of a YOLO label file, as Ultralytics reads them.

    Polygon rows (``class x1 y1 x2 y2 ...``) become their bounding boxes and duplicate rows are
    dropped. What ``yolo val`` would skip as corrupt (a malformed line, coordinates outside the image,
    a fractional class) is an error here. No file: an image without objects.
    """
    if not f.is_file():
        return np.zeros((0, 5), np.float32)
    try:
        text = f.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DGHError(f"cannot read label file '{f}' ({type(exc).__name__})", LABEL_FIX) from exc
    rows = [_numbers(line, f) for line in text.strip().splitlines() if line.strip()]
    rows = list(dict.fromkeys(rows))  # duplicate rows dropped, as Ultralytics drops them
    if any(len(r) > 6 for r in rows):
        lb = _polygon_boxes(rows, f)
    else:
        bad = next((r for r in rows if len(r) != 5), None)
        if bad is not None:
            line = " ".join(f"{v:g}" for v in bad)
            raise DGHError(f"label file '{f}' has a line with {len(bad)} values: '{line[:60]}'",
                           "use YOLO format: class cx cy w h, normalised")
        lb = np.asarray(rows, np.float32).reshape(-1, 5)
    _check_values(lb, f)
    return lb


def _numbers(line: str, f: Path) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in line.split())
    except ValueError as exc:
        raise DGHError(f"label file '{f}' has a non-numeric line: '{line[:60]}'",
                       "use YOLO format: class cx cy w h, normalised") from exc


def _polygon_boxes(rows: list[tuple[float, ...]], f: Path) -> np.ndarray:
    """Ultralytics reads a file with any row longer than 6 values as polygons, every row of it."""
    boxes = []
    for r in rows:
        if len(r) == 5 or len(r) % 2 == 0:
            raise DGHError(f"label file '{f}' mixes polygon rows with a line of {len(r)} values",
                           "use one format per file: class cx cy w h, or class x1 y1 x2 y2 ...")
        xy = np.asarray(r[1:], np.float32).reshape(-1, 2)
        (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
        boxes.append([r[0], (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0])
    return np.asarray(boxes, np.float32).reshape(-1, 5)


def _check_values(lb: np.ndarray, f: Path) -> None:
    """Ultralytics' tolerances: coordinates up to 1.01; values down to -0.01 if no width or height is negative."""
    if not len(lb):
        return
    if lb[:, 1:].max() > 1.01:
        raise DGHError(f"label file '{f}' has coordinates above 1 ({lb[:, 1:].max():g}): not normalised", LABEL_FIX)
    if lb.min() < 0 and (lb.min() < -0.01 or lb[:, 3:5].min() < 0):
        raise DGHError(f"label file '{f}' has negative values ({lb.min():g})", LABEL_FIX)
    if (lb[:, 0] % 1 != 0).any():
        raise DGHError(f"label file '{f}' has a fractional class ({lb[lb[:, 0] % 1 != 0, 0][0]:g})", LABEL_FIX)
