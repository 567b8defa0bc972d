"""The Python API takes the model as the object a user holds (an ``nn.Module``, an Ultralytics ``YOLO``),
``imgsz`` as an int or (h, w), and ``deploy`` returns the typed report with the paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import dgh_deploy
from dgh_deploy.api import DeployResult
from dgh_deploy.errors import DGHError
from dgh_deploy.loading import load_model
from dgh_deploy.reporting.report import Report


class TinyNet(nn.Module):
    """A classifier that says its own input size, as factory models may."""

    input_size = (32, 48)

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_a_plain_module_is_read_like_a_factory_result_and_left_as_it_was() -> None:
    net = TinyNet().train()
    loaded = load_model(net)
    assert loaded.task == "classify" and loaded.imgsz == (32, 48) and loaded.name == "TinyNet"
    assert net.training and loaded.module is not net  # the caller's object is not put in eval mode or shared
    assert next(loaded.module.parameters()).data_ptr() != next(net.parameters()).data_ptr()


def test_ultralytics_yolo_object_and_its_detection_model() -> None:
    from ultralytics import YOLO

    torch.manual_seed(0)
    yolo = YOLO("yolov8n.yaml")
    loaded = load_model(yolo)
    assert loaded.task == "detect" and loaded.name == "yolov8n" and loaded.extra["stride"] == 32
    assert loaded.imgsz == (640, 640) and len(loaded.class_names or ()) == 80
    direct = load_model(yolo.model)
    assert direct.fingerprint() == loaded.fingerprint()
    assert isinstance(yolo.model, nn.Module) and type(yolo.model).__name__ == "DetectionModel"  # untouched


def test_rectangular_imgsz_letterboxes_a_detector() -> None:
    from ultralytics import YOLO

    loaded = load_model(YOLO("yolov8n.yaml"), imgsz=(256, 320))
    assert loaded.imgsz == (256, 320)
    boxes, scores = loaded.module(torch.zeros(1, 3, 256, 320))
    anchors = sum((256 // s) * (320 // s) for s in (8, 16, 32))
    assert boxes.shape == (1, 4, anchors) and scores.shape == (1, 80, anchors)


@pytest.mark.parametrize(("imgsz", "message"), [
    ((256, 300), "not a multiple of the model's stride 32"),
    ((256, 320, 3), "is not an int or (h, w)"),
    ("320", "is not an int or (h, w)"),
    ((256.0, 320), "is not made of whole numbers"),
])
def test_bad_imgsz_is_one_line(imgsz: object, message: str) -> None:
    with pytest.raises(DGHError) as err:
        load_model("yolov8n.yaml", imgsz=imgsz)  # type: ignore[arg-type]
    assert message in str(err.value) and "\n" not in str(err.value)


def test_weights_with_an_object_are_refused() -> None:
    with pytest.raises(DGHError, match="weights given with a model object"):
        load_model(TinyNet(), weights="w.pt")


def test_bad_imgsz_fails_before_the_job_loads_anything(tmp_path: Path) -> None:
    with pytest.raises(DGHError, match="is not an int or"):
        dgh_deploy.deploy(target="sim", model=TinyNet(), imgsz=(1, 2, 3), out=str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_deploy_returns_the_report_with_paths(tmp_path: Path) -> None:
    result = dgh_deploy.deploy(target="sim", model=TinyNet(), calib="noise", n_images=8, holdout=4,
                               out=str(tmp_path / "job"), use_cache=False, human_report=False)
    assert isinstance(result, DeployResult) and isinstance(result.report, Report)
    on_disk = json.loads((tmp_path / "job" / "report.json").read_text())
    assert result.report.to_json() == on_disk and Report.from_json(on_disk) == result.report
    assert result.out == tmp_path / "job"
    assert result.model_path == tmp_path / "job" / result.report.artifacts["model"].path
    assert all(p.is_file() for p in result.artifacts.values()) and result.artifacts["report"].name == "report.json"
    assert on_disk["config"]["model"] == "<TinyNet object>" and on_disk["model"]["imgsz"] == [32, 48]
    assert result.metric() is None  # no --val-data: no metric to give


def test_generate_takes_an_object_and_a_rectangle(tmp_path: Path) -> None:
    calib = dgh_deploy.generate(model=TinyNet(), imgsz=(32, 64), calib="noise", n_images=4,
                                out=tmp_path / "c.npz", progress=False)
    assert calib is not None and calib.images.shape == (4, 3, 32, 64) and (tmp_path / "c.npz").is_file()
