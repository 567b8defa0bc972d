"""The per-layer diagnosis: names a user can find in the PyTorch model, the weakest layers and the
largest fall, and a target that compares its quantized model with float layer by layer."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.preprocessing import Preprocessing
from dgh_deploy.reporting.report import LayerDiagnosis
from dgh_deploy.targets import TargetOptions, get_target
from dgh_deploy.targets.tensorrt.layer_errors import onnx_layer
from dgh_deploy.targets.tflite.layer_sqnr import full_path, module_path
from dgh_deploy.verification.layers import LayerError, diagnosis_images, sqnr_db, summarise

LITERT = ("litert_torch._convert.to_channel_last_io.ChannelLastIOWrapper"
          "/dgh_deploy.models.yolov5.YOLOv5Detector_wrapped/ultralytics.nn.modules.block.C3_2/ultralytics.nn.modules.conv.Conv_cv2/torch.nn.modules.conv.Conv2d_conv")


def test_names_are_the_pytorch_modules() -> None:
    assert module_path(f"{LITERT}_x;;{LITERT};2") == "2.cv2.conv"  # the fused op's own name is the last
    assert module_path("litert_torch._convert.to_channel_last_io.ChannelLastIOWrapper/m.Net_wrapped;61") == "(model)"
    assert module_path("model/tf.math.add_3/Add") == "model/tf.math.add_3/Add"  # another converter's: as it is
    # litert-torch leaves out containers the model indexes instead of calling (YOLOv5's model.1)
    names = ["model", "model.1", "model.1.conv", "model.4.m.1.conv", "a.x", "b.x"]
    assert full_path("1.conv", names) == "model.1.conv" and full_path("x", names) == "x"  # x: ambiguous
    assert onnx_layer("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"
    assert onnx_layer("/model.9/cv2/conv/Conv") == "model.9.cv2.conv"
    assert onnx_layer("/Relu") == "(model)"


def _row(index: int, db: float) -> LayerError:
    return LayerError(index, "CONV_2D", f"t{index}", f"l{index}", db, -1.0, 1.0, 0.01, 0)


def test_summary_keeps_the_weakest_and_finds_the_largest_fall() -> None:
    rows = [_row(0, 40.0), _row(1, math.inf), _row(2, 38.0), _row(3, 20.0), _row(4, 19.0)]
    d = summarise(rows, 8, "rt", "layer_sqnr.csv")
    assert [w.layer for w in d.worst] == ["l4", "l3", "l2", "l0"]  # finite only, lowest first
    assert d.largest_fall is not None and d.largest_fall.layer == "l3" and d.largest_fall.fall_db == 18.0
    assert d.median_db == 29.0 and d.tensors == 5
    assert LayerDiagnosis.from_json(d.to_json()) == d


def test_sqnr_and_the_image_budget() -> None:
    x = np.ones(100, np.float32)
    assert sqnr_db(x, x) == math.inf and sqnr_db(x, x * 1.1) == pytest.approx(20.0)
    assert diagnosis_images(64, (320, 320)) == 8 and diagnosis_images(64, (640, 640)) == 2
    assert diagnosis_images(64, (32, 32)) == 32 and diagnosis_images(5, (32, 32)) == 5


def _tiny() -> LoadedModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    return LoadedModel(net, "tiny", "classify", (16, 16), Preprocessing())


def test_sim_compares_every_quantized_layer_in_execution_order(tmp_path: Path) -> None:
    model = _tiny()
    images = np.random.default_rng(0).uniform(0, 1, (24, 3, 16, 16)).astype(np.float32)
    calib = CalibrationSet(images[:16], source="real")
    coarse = TargetOptions(weight_bits=4, act_bits=4)
    fine = TargetOptions(weight_bits=8, act_bits=8)
    rows = {}
    for bits, options in (("W4A4", coarse), ("W8A8", fine)):
        target = get_target("sim")
        target.options = options
        rows[bits] = target.layer_errors(model, target.build(model, calib, tmp_path), images[16:])
    assert [r.layer for r in rows["W8A8"]] == ["0", "3", "7"]  # conv (BN folded in), conv, linear
    assert all(r.op in ("Conv2d", "Linear") for r in rows["W8A8"])
    for coarse_row, fine_row in zip(rows["W4A4"], rows["W8A8"], strict=True):
        assert fine_row.sqnr_db > coarse_row.sqnr_db + 6  # 4 more bits: much less noise, measured not assumed
    assert 20 < rows["W8A8"][0].sqnr_db < 80


def test_the_advice_names_the_targets_own_flag_only_when_the_drop_is_real() -> None:
    mods = ["model.9", "model.8.m.0"]
    tflite, trt = get_target("tflite-int8"), get_target("tensorrt-int8")
    assert tflite.repair_advice(2.4, mods).endswith("--int16-layers model.9,model.8.m.0")
    assert trt.repair_advice(2.4, mods).endswith("--float-layers model.9,model.8.m.0")
    assert tflite.repair_advice(0.6, mods) is None and tflite.repair_advice(None, mods) is None
    assert get_target("tflite-int8", int16_layers="model.9").repair_advice(2.4, mods) is None  # already repairing
    assert get_target("ethos-u").repair_advice(2.4, mods).endswith("--int16-layers model.9,model.8.m.0")  # its own
    assert get_target("sim").repair_advice(2.4, mods) is None
