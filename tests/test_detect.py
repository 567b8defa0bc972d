"""Detection task: mAP of real YOLOv5n on coco128, data YAML errors, data-free agreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dgh_deploy.errors import DGHError
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.loading import load_model
from dgh_deploy.runtime.base import Runner, TorchRunner
from dgh_deploy.tasks.detect import DetectTask
from dgh_deploy.tasks.detect_data import read_data_yaml
from dgh_deploy.tasks.detect_postprocess import NMSConfig

IMGSZ = 320
# YOLOv5n v6.1 on coco128 val2017 at 320 (../shared/assets/README.md), in points.
REFERENCE_320 = {"single": (27.7, 43.9), "multi": (28.9, 46.0)}


class RecordingRunner(Runner):
    """Runs the model once per batch and replays the outputs: two NMS settings, one inference."""

    def __init__(self, runner: Runner) -> None:
        self.runner, self.seen, self.replay = runner, [], None

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        if self.replay is None:
            self.seen.append(self.runner.infer(x))
            return self.seen[-1]
        return self.replay.pop(0)


@pytest.fixture(scope="module")
def v5(assets: Path) -> LoadedModel:
    return load_model("yolov5n", str(assets / "yolov5n" / "yolov5n-coco-v6.1.pt"), imgsz=IMGSZ)


@pytest.fixture(scope="module")
def coco128(assets: Path) -> str:
    return str(assets / "coco128" / "coco128.yaml")


def test_yolov5n_map_on_coco128_matches_the_reference(v5: LoadedModel, coco128: str) -> None:
    runner = RecordingRunner(TorchRunner(v5.module))
    task = DetectTask()
    single = task.evaluate(runner, v5, coco128)
    runner.replay = list(runner.seen)
    multi = DetectTask(NMSConfig(multi_label=True)).evaluate(runner, v5, coco128)
    assert single["images"] == multi["images"] == 128
    for got, (ref5095, ref50) in ((single, REFERENCE_320["single"]), (multi, REFERENCE_320["multi"])):
        assert got["mAP50-95"] == pytest.approx(ref5095, abs=0.5)  # 0.005 in Ultralytics' 0..1 scale
        assert got["mAP50"] == pytest.approx(ref50, abs=0.5)
    assert task.metric in single


def test_evaluate_limit_and_class_count_checks(v5: LoadedModel, coco128: str, tmp_path: Path) -> None:
    task = DetectTask()
    few = task.evaluate(TorchRunner(v5.module), v5, coco128, limit=4)
    assert few["images"] == 4 and 0 < few["mAP50-95"] <= few["mAP50"] <= 100
    # A runner that finds nothing scores zero: the metric can fail.
    blind = task.evaluate(_Blind(TorchRunner(v5.module)), v5, coco128, limit=4)
    assert blind["mAP50-95"] == 0.0
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(f"path: {Path(coco128).parent}\nval: images/val2017\nnames: [a, b, c]\n")
    with pytest.raises(DGHError, match=r"has class .* names 3 classes"):
        task.evaluate(TorchRunner(v5.module), v5, str(wrong), limit=2)
    wrong.write_text(f"path: {Path(coco128).parent}\nval: images/val2017\nnames: {[f'c{i}' for i in range(90)]}\n")
    with pytest.raises(DGHError, match=r"predicts 80 classes but .* names 90"):
        task.evaluate(TorchRunner(v5.module), v5, str(wrong), limit=2)


class _Blind(Runner):
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        boxes, scores = self.runner.infer(x)
        return [boxes, np.zeros_like(scores)]


def _dataset(tmp_path: Path, images: bool = True, labels: bool = True) -> Path:
    root = tmp_path / "data"
    if images:
        (root / "images" / "val").mkdir(parents=True)
        (root / "images" / "val" / "a.jpg").write_bytes(b"")
    if labels:
        (root / "labels" / "val").mkdir(parents=True)
        (root / "labels" / "val" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    yaml = tmp_path / "data.yaml"
    yaml.write_text(f"path: {root}\nval: images/val\nnames: {{0: thing}}\n")
    return yaml


@pytest.mark.parametrize(
    "case,match",
    [
        ("no_images", "images folder .* for the 'val' split .* not found"),
        ("no_labels", "labels folder .* not found"),
        ("no_val", "has no 'val' entry"),
        ("no_yaml", "data YAML .* not found"),
        ("bad_label", "line with 3 values"),
    ],
)
def test_bad_data_yaml_is_one_clear_line(case: str, match: str, tmp_path: Path) -> None:
    yaml = _dataset(tmp_path, images=case != "no_images", labels=case != "no_labels")
    if case == "no_val":
        yaml.write_text("names: [thing]\n")
    if case == "no_yaml":
        yaml = tmp_path / "missing.yaml"
    if case == "bad_label":
        (tmp_path / "data" / "labels" / "val" / "a.txt").write_text("0 0.5 0.5\n")
    with pytest.raises(DGHError, match=match) as err:
        read_data_yaml(yaml)
    assert "\n" not in str(err.value) and err.value.fix


def test_data_yaml_reads_coco128(coco128: str) -> None:
    data = read_data_yaml(coco128)
    assert len(data.images) == 128 and len(data.names) == 80
    assert sum(len(lab) for lab in data.labels) == 898  # boxes in val2017, per the assets README


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"task": "classify"}, "--task classify given, but 'yolov5n' is a detect model"),
        ({"imgsz": 100}, "not a multiple of the model's stride 32"),
    ],
)
def test_bad_detector_input_is_one_clear_line(kwargs: dict, match: str, assets: Path) -> None:
    with pytest.raises(DGHError, match=match) as err:
        load_model("yolov5n", str(assets / "yolov5n" / "yolov5n-coco-v6.1.pt"), **kwargs)
    assert "\n" not in str(err.value)


def test_agreement_reads_like_an_engineer_expects(v5: LoadedModel, assets: Path) -> None:
    from dgh_deploy.generation import make_calibration_set

    # --calib real:PATH for a detector: letterboxed (pad 114), pixels / 255, at the model's size
    calib = make_calibration_set(v5, f"real:{assets / 'coco128' / 'images' / 'train2017'}", n_images=4, iters=0)
    x = calib.images
    assert x.shape == (4, 3, IMGSZ, IMGSZ) and x.min() >= 0 and x.max() <= 1
    assert np.isclose(x, 114 / 255, atol=1e-6).all(axis=(0, 1)).any()  # letterbox bands, not a crop
    ref = TorchRunner(v5.module).infer(x)
    task = DetectTask()
    same = task.agreement(ref, ref)
    assert same["detection_agreement"] == 100 and same["boxes_sqnr_db"] == float("inf")
    assert same["reference_detections"] > 0
    # int8-like rounding of the outputs (1/255 steps) keeps most detections
    coarse = [np.round(r * 255) / 255 for r in ref]
    close = task.agreement(ref, coarse)
    assert 20 < close["scores_sqnr_db"] < 80 and close["detection_agreement"] > 80
    assert close["matched_mean_iou"] > 0.9
    # another image's outputs agree with almost nothing
    other = task.agreement(ref, [np.roll(r, 1, axis=0) for r in ref])
    assert other["detection_agreement"] < close["detection_agreement"] - 30
