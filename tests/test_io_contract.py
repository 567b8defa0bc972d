"""The input contract: the recipe device code follows, from the model's preprocessing and the file's I/O."""

from __future__ import annotations

from torch import nn

from dgh_deploy.io_contract import input_layout, io_contract
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.preprocessing import Preprocessing


def _model(pre: Preprocessing, task: str = "classify") -> LoadedModel:
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    return LoadedModel(module, "m", task, (48, 64), pre)


def _io(scale: float, zero_point: int) -> dict:
    return {"input": {"name": "in", "shape": [1, 48, 64, 3], "dtype": "int8", "scale": scale, "zero_point": zero_point},
            "outputs": [{"name": "out", "shape": [1, 4], "dtype": "int8", "scale": 0.5, "zero_point": 3}]}


def test_a_plain_scale_of_one_255th_feeds_pixels_minus_128() -> None:
    c = io_contract(_model(Preprocessing(resize="letterbox", pad_value=114)), "m.tflite", _io(1 / 255, -128), ["x"])
    assert c.layout == "NHWC" and c.pad_value == 114 and c.input.scale == 1 / 255
    assert "x = pixel / 255" in c.steps
    assert any(s.endswith("as int8 (here exactly q = pixel - 128)") for s in c.steps)
    assert any("letterbox to 48x64" in s and "114" in s for s in c.steps)
    assert c.outputs[0].meaning == "x; dequantize: real = (q - 3) * 0.5"


def test_mean_and_std_are_written_out_and_no_pixel_shortcut_is_claimed() -> None:
    pre = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    c = io_contract(_model(pre), "m.tflite", _io(1 / 255, -128), ["scores"])
    assert c.pad_value is None and c.resize == "center_crop"
    assert any("mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)" in s for s in c.steps)
    assert not any("exactly" in s for s in c.steps)
    assert any(s.startswith("q = clamp(round(x / 0.00392156863) - 128, -128, 127)") for s in c.steps)


def test_a_runner_without_a_file_gives_the_float_models_own_io() -> None:
    c = io_contract(_model(Preprocessing()), "sim_scales.json", {}, ["scores"])
    assert c.layout == "NCHW" and c.input.shape == [1, 3, 48, 64] and c.input.dtype == "float32"
    assert c.outputs[0].shape == [1, 4] and c.outputs[0].scale is None
    assert "feed x as float32 (the file quantizes its input itself)" in c.steps


def test_layout_is_read_from_where_the_channels_are() -> None:
    assert input_layout([1, 32, 32, 3], (32, 32)) == "NHWC"
    assert input_layout([1, 3, 32, 32], (32, 32)) == "NCHW"
