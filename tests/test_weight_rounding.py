"""GPTQ weight rounding onto a converter's grid (dgh_deploy/calibration/weights/converter_grid.py).

The unit tests hold the rounding to its contract in PyTorch: every folded weight on the int8 grid
of its channel, each channel's largest weight kept at its grid end (so the converter computes the
same scale), less output error than rounding to the nearest on the images it was given, and the
BatchNorm a conv feeds found without tracing. The build tests hold the converter to it: the int8
file's conv weights are exactly GPTQ's integers, with each converter that is installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.calibration.weights.converter_grid import (
    QMAX,
    fold_factor,
    following_batchnorms,
    round_onto_converter_grid,
)
from dgh_deploy.errors import DGHError
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.preprocessing import Preprocessing
from dgh_deploy.targets import TargetOptions, get_target
from dgh_deploy.targets.tflite.converter import CONVERTERS
from dgh_deploy.targets.tflite.target import converter_class


class ConvNet(nn.Module):
    """conv + BN, a conv without BN, a depthwise conv (left to the converter) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.dw, self.bn_dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn_dw(self.dw(torch.relu(self.conv2(x)))))
        return self.fc(x.mean((2, 3)))


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    net = ConvNet()
    with torch.no_grad():  # BN statistics far from the identity, so that folding matters
        for bn in (net.bn1, net.bn_dw):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.2, 3.0)
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.3, 0.3)
    return net.eval()


def images(n: int = 16, size: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, size, size)).astype(np.float32)


def folded(net: nn.Module, name: str, bn: nn.BatchNorm2d | None) -> torch.Tensor:
    w = dict(net.named_modules())[name].weight.detach().double()
    k = fold_factor(bn)
    return w * k.view(-1, 1, 1, 1) if k is not None else w


def test_the_batchnorm_a_conv_feeds_is_found_without_tracing() -> None:
    net = conv_net()
    convs = {n: m for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    found = following_batchnorms(net, convs, torch.as_tensor(images(1)))
    assert {name: bn for name, bn in found.items()} == {"conv1": net.bn1, "dw": net.bn_dw}


def test_folded_weights_sit_on_their_channels_grid_with_the_ends_kept() -> None:
    net = conv_net()
    rounded, done = round_onto_converter_grid(net, images(), progress=False)
    assert (done.layers, done.left_to_converter, done.folded_batchnorms) == (2, 1, 1)
    for name, bn in (("conv1", rounded.bn1), ("conv2", None)):
        original, q = folded(net, name, bn), folded(rounded, name, bn)
        scale = original.abs().amax(dim=(1, 2, 3), keepdim=True) / QMAX
        steps = q / scale
        assert torch.allclose(steps, steps.round(), atol=1e-4), name  # on the grid
        assert steps.round().abs().max() <= QMAX
        # each channel's largest weight is at +-127 steps: the converter's scale is the original one
        assert torch.allclose(q.abs().amax(dim=(1, 2, 3)), original.abs().amax(dim=(1, 2, 3)), rtol=1e-6), name
        assert not torch.equal(q, torch.round(original / scale) * scale), f"{name}: GPTQ chose nothing of its own"
    assert torch.equal(rounded.dw.weight, net.dw.weight)  # depthwise: the converter rounds it


def test_gptq_moves_a_layers_output_less_than_rounding_to_the_nearest() -> None:
    net, calib = conv_net(), images(32)
    rounded, _ = round_onto_converter_grid(net, calib, progress=False)
    seen: dict[str, torch.Tensor] = {}
    hook = net.conv2.register_forward_pre_hook(lambda _m, inputs: seen.update(x=inputs[0].double()))
    with torch.no_grad():
        net(torch.as_tensor(calib))
    hook.remove()
    original = folded(net, "conv2", None)
    scale = original.abs().amax(dim=(1, 2, 3), keepdim=True) / QMAX
    nearest = torch.round(original / scale) * scale

    def error(w: torch.Tensor) -> float:  # of the layer's output on the images it was rounded with
        return float((nn.functional.conv2d(seen["x"], w - original, padding=1) ** 2).sum())

    assert error(folded(rounded, "conv2", None)) < 0.85 * error(nearest)  # 0.71 here


def test_per_tensor_grids_keep_the_tensors_largest_weight() -> None:
    net = conv_net()
    rounded, _ = round_onto_converter_grid(net, images(), per_channel=False, progress=False)
    original, q = folded(net, "conv2", None), folded(rounded, "conv2", None)
    scale = original.abs().max() / QMAX
    assert torch.allclose(q / scale, (q / scale).round(), atol=1e-4)
    assert float(q.abs().max()) == pytest.approx(float(original.abs().max()), rel=1e-6)


# --- through the converters -----------------------------------------------------------------------
@pytest.fixture(scope="module", params=CONVERTERS)
def converter(request: pytest.FixtureRequest) -> str:
    missing = converter_class(request.param)().missing_requirements()
    if missing:
        pytest.skip(f"the {request.param} converter stack is not in this venv ({', '.join(missing)} missing)")
    return request.param


def int8_filters(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The int8 file's per-channel 4-D constant tensors: (integers, scales)."""
    from dgh_deploy.runtime.litert_runner import open_interpreter

    interpreter = open_interpreter(path, 1)
    out = []
    for d in interpreter.get_tensor_details():
        scales = d["quantization_parameters"]["scales"]
        if d["dtype"] == np.int8 and len(d["shape"]) == 4 and len(scales) > 1:
            try:
                out.append((interpreter.get_tensor(d["index"]), scales))
            except ValueError:  # an activation, not a constant
                continue
    return out


def test_the_int8_file_holds_gptqs_integers(converter: str, tmp_path: Path) -> None:
    net = conv_net()
    model = LoadedModel(module=net, name="convnet", task="classify", imgsz=(8, 8), preprocessing=Preprocessing())
    calib = CalibrationSet(images(24), "noise")
    target: Any = get_target("tflite-int8", converter=converter, weight_rounding="gptq")
    target.options, target.progress = TargetOptions(threads=1), False
    result = target.build(model, calib, tmp_path)
    assert result.info.export_rewrites["weight_rounding"]["layers"] == 2
    rounded, _ = round_onto_converter_grid(net, calib.images, progress=False)  # deterministic: the same choice
    filters = int8_filters(result.artifacts["model"])
    for name, bn in (("conv1", rounded.bn1), ("conv2", None)):
        q = folded(rounded, name, bn)
        scale = q.abs().amax(dim=(1, 2, 3)) / QMAX
        steps = torch.round(q / scale.view(-1, 1, 1, 1)).numpy().astype(np.int64).transpose(0, 2, 3, 1)  # OHWI
        match = [ints for ints, s in filters if ints.shape == steps.shape and np.allclose(s, scale.numpy(), rtol=1e-5)]
        assert len(match) == 1, f"{name}: no int8 filter with GPTQ's grid in the file"
        assert np.array_equal(match[0].astype(np.int64), steps), f"{name}: the converter rounded again"


def test_an_onnx_file_is_not_gptq_rounded_silently(tmp_path: Path) -> None:
    """build_from_onnx converts a file whose weights the job cannot reach: --weight-rounding gptq is refused."""
    model = LoadedModel(module=conv_net(), name="convnet", task="classify", imgsz=(8, 8),
                        preprocessing=Preprocessing())
    target: Any = get_target("tflite-int8", weight_rounding="gptq")
    with pytest.raises(DGHError, match="not an ONNX file's") as refused:
        target.build_from_onnx(model, tmp_path / "model.onnx", CalibrationSet(images(8), "noise"), tmp_path)
    assert "--weight-rounding nearest" in refused.value.fix


@pytest.mark.parametrize(("task", "expected"), [("detect", "gptq"), ("classify", "nearest")])
def test_the_default_rounding_follows_the_task(task: str, expected: str) -> None:
    """Detectors gain from GPTQ (bench/tflite_ranges.py), classifiers did not (EfficientNet-Lite0): the
    default follows, and an explicit --weight-rounding wins either way."""
    model = LoadedModel(module=conv_net(), name="convnet", task=task, imgsz=(8, 8), preprocessing=Preprocessing())
    assert get_target("tflite-int8").rounding_for(model) == expected  # type: ignore[attr-defined]
    assert get_target("ethos-u").tflite.rounding_for(model) == expected  # type: ignore[attr-defined]
    other = "nearest" if expected == "gptq" else "gptq"
    assert get_target("tflite-int8", weight_rounding=other).rounding_for(model) == other  # type: ignore[attr-defined]


def test_a_detectors_onnx_file_takes_the_converters_rounding_unasked(tmp_path: Path) -> None:
    """GPTQ as a detector's default is not a request: an ONNX file (weights out of reach) goes on to the
    converter, where only an explicit --weight-rounding gptq is refused."""
    model = LoadedModel(module=conv_net(), name="convnet", task="detect", imgsz=(8, 8), preprocessing=Preprocessing())
    target: Any = get_target("tflite-int8", converter="litert-torch")
    with pytest.raises(DGHError, match="converts the PyTorch module, not an ONNX file"):
        target.build_from_onnx(model, tmp_path / "model.onnx", CalibrationSet(images(8), "noise"), tmp_path)
