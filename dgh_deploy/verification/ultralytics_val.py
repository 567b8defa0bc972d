"""An Ultralytics-layout artifact scored by ``yolo val``'s own validator, beside our score of the same file.

Both numbers are on the same file and the same images: ours through the job's evaluation (our
image reading, Ultralytics' letterbox pixel for pixel, Ultralytics' NMS and metric code, labels
scored in input pixels) with the validator's settings (NMS conf 0.001, IoU 0.7, multi-label;
boxes not clipped to the image: Ultralytics 8.4 scores them in the letterboxed input, and clipping
alone is worth 0.2-0.5 mAP50-95 on coco128), Ultralytics' through ``YOLO(path).val``, which loads
the file as any user's ``yolo val model=...`` would. They agree to 0.01 points on YOLOv5n (see
"Detection metrics" in docs/design.md); a difference left is the runtime's, not the scorer's.

The validator runs offline and leaves no trace: no package auto-install, no label cache written
beside the user's dataset, its run folder in a temporary directory.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

from dgh_deploy.errors import DGHError, exc_reason
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.reporting.report import ValidatorComparison
from dgh_deploy.runtime.base import Runner
from dgh_deploy.tasks.classify import evenly_spaced
from dgh_deploy.tasks.detect_postprocess import NMSConfig
from dgh_deploy.ultralytics_quiet import quiet_ultralytics

# DetectionValidator's defaults (ultralytics/cfg/default.yaml; multi_label in its postprocess).
VALIDATOR_NMS = NMSConfig(conf=0.001, iou=0.7, max_det=300, multi_label=True)
METRIC = "mAP50-95"


def compare_with_ultralytics(model: LoadedModel, runner: Runner, path: Path, val_data: str,
                             limit: int | None) -> ValidatorComparison:
    """Ours and Ultralytics' validator on the artifact ``path`` (``runner`` runs it in the model's layout)."""
    from dgh_deploy.tasks.detect import DetectTask

    ours = DetectTask(nms=VALIDATOR_NMS, clip=False).evaluate(runner, model, val_data, limit)
    theirs = ultralytics_val(path, val_data, model.imgsz, limit)
    return ValidatorComparison(
        file=path.name,
        nms="conf 0.001, IoU 0.7, multi-label, 300 boxes, unclipped (Ultralytics' validator settings)",
        ours=ours, theirs=theirs, difference=round(ours[METRIC] - theirs[METRIC], 4))


def ultralytics_val(path: Path, val_data: str, imgsz: tuple[int, int], limit: int | None = None) -> dict[str, float]:
    """``YOLO(path).val(data=val_data)``: mAP50-95, mAP50, precision, recall in points, and images."""
    with tempfile.TemporaryDirectory(prefix="dgh-yolo-val-") as tmp, _offline(), quiet_ultralytics(), _silent():
        data, images = _val_split(val_data, limit, Path(tmp))
        from ultralytics import YOLO

        try:  # the validator takes the input size (h, w) from the file's metadata; imgsz is only checked
            metrics = YOLO(str(path), task="detect").val(
                data=data, imgsz=max(imgsz), batch=1, device="cpu", workers=0, plots=False, save_json=False,
                verbose=False, project=tmp, name="val", exist_ok=True,
            )
        except Exception as exc:  # the file or data Ultralytics cannot use: the job says so in one line
            raise DGHError(f"Ultralytics' validator failed on '{path.name}' ({exc_reason(exc, 160)})",
                           "rerun with --verbose to see Ultralytics' log; the artifact itself was written") from exc
    box = metrics.box
    return {"mAP50-95": 100.0 * float(box.map), "mAP50": 100.0 * float(box.map50),
            "precision": 100.0 * float(box.mp), "recall": 100.0 * float(box.mr), "images": float(images)}


def _val_split(val_data: str, limit: int | None, folder: Path) -> tuple[str, int]:
    """The data YAML for the validator: ``val_data`` itself, or with ``limit`` a copy whose val split
    lists the images our evaluation picks (the same evenly spaced ones)."""
    import yaml

    from dgh_deploy.tasks.detect_data import read_data_yaml

    data = read_data_yaml(val_data, "val")
    if limit is None or limit >= len(data.images):
        return val_data, len(data.images)
    picked = [str(data.images[int(k)].resolve()) for k in evenly_spaced(len(data.images), limit)]
    listing = folder / "val.txt"
    listing.write_text("\n".join(picked) + "\n")
    names = dict(enumerate(data.names))
    yaml_path = folder / "data.yaml"
    yaml_path.write_text(yaml.safe_dump({"path": str(folder), "train": str(listing), "val": str(listing),
                                         "names": names}))
    return str(yaml_path), len(picked)


@contextlib.contextmanager
def _silent() -> Iterator[None]:
    """The validator's progress bars and table off the console, unless --verbose."""
    if logging.getLogger("dgh_deploy").isEnabledFor(logging.DEBUG):
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """No pip auto-install (its runtime check asks for newer packages than may be installed), no
    download, and no label cache written into the user's dataset folder."""
    import ultralytics.data.utils as data_utils
    import ultralytics.utils.checks as checks

    # An unwritable dataset folder is what Ultralytics already handles: the cache stays in memory.
    with mock.patch.object(checks, "AUTOINSTALL", False), mock.patch.object(checks, "ONLINE", False), \
            mock.patch.object(data_utils, "is_dir_writeable", lambda path: False):
        yield
