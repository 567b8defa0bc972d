"""The tensorrt-int8 target on the real CIFAR-10 ResNet-20: TensorRT's Q/DQ rules, the cache, accuracy on ORT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.errors import DGHError
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.loading import load_model
from dgh_deploy.runtime.base import TorchRunner
from dgh_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from dgh_deploy.targets import BuildResult, TargetOptions, all_targets, get_target
from dgh_deploy.targets.tensorrt.cache import read_calibration_cache
from dgh_deploy.targets.tensorrt.engine import can_build_here
from dgh_deploy.targets.tensorrt.qdq import insert_qdq
from dgh_deploy.tasks.classify import ClassifyTask, evenly_spaced, list_image_folder

pytestmark = pytest.mark.assets


@pytest.fixture(scope="module")
def r20(r20_weights: str) -> LoadedModel:
    return load_model("cifar_resnet20", r20_weights)


@pytest.fixture(scope="module")
def calib256(assets: Path, r20: LoadedModel) -> CalibrationSet:
    files, _, _ = list_image_folder(assets / "cifar10" / "calib")
    pick = evenly_spaced(len(files), 256)
    return CalibrationSet(np.stack([r20.preprocessing.load(str(files[i]), r20.imgsz) for i in pick]), "real:calib")


@pytest.fixture(scope="module")
def built(r20: LoadedModel, calib256: CalibrationSet, tmp_path_factory: pytest.TempPathFactory) -> BuildResult:
    target = get_target("tensorrt-int8")
    return target.build(r20, calib256, tmp_path_factory.mktemp("trt"))


def _graph(path: Path) -> tuple[onnx.GraphProto, dict[str, onnx.NodeProto], dict[str, np.ndarray]]:
    g = onnx.load(str(path)).graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    return g, producer, inits


def test_registered_and_needs_no_tensorrt() -> None:
    target = all_targets()["tensorrt-int8"]()
    assert target.requires == ("onnx", "onnxruntime") and target.missing_requirements() == []
    assert target.constraints.act_symmetric and target.constraints.weight_granularity == "per-channel"


def test_artifacts_info_and_build_commands(built: BuildResult) -> None:
    a = built.artifacts
    assert {"model", "float_model", "cache", "build_script"} <= set(a) and all(p.is_file() for p in a.values())
    info = built.info
    assert info.act_range == "entropy" and set(built.timings) >= {"export", "calibration", "qdq"}
    cmds = info.build_commands
    assert any(c.startswith("trtexec --onnx=model_qdq.onnx --stronglyTyped ") and "--saveEngine=" in c for c in cmds)
    assert any(c.startswith("trtexec --onnx=model_float.onnx --int8 --calib=model.cache ") for c in cmds)
    assert any(c.startswith("polygraphy convert model_float.onnx --int8 --calibration-cache model.cache") for c in cmds)
    script = a["build_script"].read_text()
    assert all(c in script for c in cmds if c.startswith("trtexec"))
    if not can_build_here():  # no tensorrt or no GPU: the build ends with the commands
        assert info.engine is None and "engine" not in a


def test_qdq_graph_follows_tensorrt_rules(built: BuildResult) -> None:
    path = built.artifacts["model"]
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    g, producer, inits = _graph(path)
    float_convs = sum(n.op_type == "Conv" for n in onnx.load(str(built.artifacts["float_model"])).graph.node)

    def dq_of(tensor: str) -> onnx.NodeProto:
        node = producer.get(tensor)
        assert node is not None and node.op_type == "DequantizeLinear", f"{tensor} is not dequantized"
        return node

    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            scale, zp = inits[n.input[1]], inits[n.input[2]]
            assert zp.dtype == np.int8 and not zp.any() and (scale > 0).all() and scale.dtype == np.float32
    convs = [n for n in g.node if n.op_type == "Conv"]
    assert len(convs) == float_convs
    for n in convs:
        dq_of(n.input[0])
        w_dq = dq_of(n.input[1])
        axis = {a.name: a.i for a in w_dq.attribute}.get("axis")
        w = inits[producer[w_dq.input[0]].input[0]]
        assert axis == 0 and inits[w_dq.input[1]].shape == (w.shape[0],)
    gemms = [n for n in g.node if n.op_type == "Gemm"]
    assert gemms
    for n in gemms:
        dq_of(n.input[0])
        w_dq = dq_of(n.input[1])
        trans_b = {a.name: a.i for a in n.attribute}.get("transB", 0)
        w = inits[producer[w_dq.input[0]].input[0]]
        axis = {a.name: a.i for a in w_dq.attribute}["axis"]
        assert axis == (0 if trans_b else 1) and inits[w_dq.input[1]].shape == (w.shape[axis],)
    adds = [n for n in g.node if n.op_type == "Add"]
    assert len(adds) == 9
    for n in adds:
        dq_of(n.input[0])
        dq_of(n.input[1])
    for n in g.node:
        if n.op_type == "Relu":  # fed straight by its Conv or Add: nothing between them for TensorRT to fuse over
            assert producer[n.input[0]].op_type in ("Conv", "Add")
    assert [o.name for o in g.output] == ["output0"] and producer["output0"].op_type == "Gemm"


def test_cache_names_and_scales_are_the_qdq_ones(built: BuildResult) -> None:
    cache = read_calibration_cache(built.artifacts["cache"])
    fg = onnx.load(str(built.artifacts["float_model"])).graph
    onnx_names = {i.name for i in fg.input} | {o for n in fg.node for o in n.output}
    assert set(cache.scales) <= onnx_names
    feeds = {n.input[0] for n in fg.node if n.op_type in ("Conv", "Gemm")}
    feeds |= {i for n in fg.node if n.op_type == "Add" for i in n.input}
    assert {"images", "output0"} | feeds <= set(cache.scales)
    assert cache.algorithm == "EntropyCalibration2"
    g, _, inits = _graph(built.artifacts["model"])
    checked = 0
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in cache.scales:
            assert float(inits[n.input[1]]) == cache.scales[n.input[0]]  # one set of scales, bit for bit
            checked += 1
    assert checked == built.info.qdq_activations > 20


def test_per_tensor_weights(built: BuildResult) -> None:
    float_model = onnx.load(str(built.artifacts["float_model"]))
    amax = read_calibration_cache(built.artifacts["cache"]).amax()
    qdq, plan = insert_qdq(float_model, amax, per_channel=False)
    inits = {t.name for t in qdq.graph.initializer}
    producer = {o: n for n in qdq.graph.node for o in n.output}
    weight_dq = [n for n in qdq.graph.node
                 if n.op_type == "DequantizeLinear" and producer[n.input[0]].input[0] in inits]
    assert len(plan.weights) == len(weight_dq) == 22  # 21 Conv + 1 Gemm
    assert all(not any(a.name == "axis" for a in n.attribute) for n in weight_dq)
    assert all(numpy_helper.to_array(next(t for t in qdq.graph.initializer if t.name == n.input[1])).ndim == 0
               for n in weight_dq)


def test_qdq_accuracy_on_real_images(built: BuildResult, r20: LoadedModel, assets: Path) -> None:
    """1000 CIFAR-10 test images: within one point of float (0.1 measured on all 10,000)."""
    task = ClassifyTask()
    test_dir = str(assets / "cifar10" / "test")
    f = task.evaluate(TorchRunner(r20.module), r20, test_dir, limit=1000)["top1"]
    q = task.evaluate(built.runner, r20, test_dir, limit=1000)["top1"]
    assert f - q <= 1.0, (f, q)
    # The Q/DQ model really is quantized: its logits differ from the float ONNX model's.
    x = np.stack([r20.preprocessing.load(str(p), r20.imgsz)
                  for p in list_image_folder(test_dir)[0][:16]])
    ref = OnnxRuntimeRunner(built.artifacts["float_model"]).infer(x)[0]
    out = built.runner.infer(x)[0]
    assert 1e-4 < np.abs(out - ref).max() < 0.5 * np.abs(ref).max()


def test_max_range_gives_wider_ranges(r20: LoadedModel, calib256: CalibrationSet, built: BuildResult,
                                      tmp_path: Path) -> None:
    target = get_target("tensorrt-int8")
    target.options = TargetOptions(act_range="max")
    small = CalibrationSet(calib256.images[:64], calib256.source)
    result = target.build(r20, small, tmp_path)
    assert result.info.act_range == "max"
    by_max = read_calibration_cache(result.artifacts["cache"]).scales
    by_entropy = read_calibration_cache(built.artifacts["cache"]).scales
    wider = sum(by_max[k] >= by_entropy[k] for k in by_entropy)
    assert wider >= 0.8 * len(by_entropy)  # entropy clips most tensors below their max


def test_float_layers_get_no_qdq_and_less_noise(r20: LoadedModel, calib256: CalibrationSet, built: BuildResult,
                                                tmp_path: Path) -> None:
    """--float-layers: the named module's convs and residual adds get no Q/DQ (TensorRT runs them in
    float), the rest is as before, and the noise they added is gone."""
    target = get_target("tensorrt-int8", float_layers="layer3")
    target.options = TargetOptions(threads=1)
    mixed = target.build(r20, calib256, tmp_path)
    kept = mixed.info.float_layers
    assert sorted(k for k in kept if "layer3" in k) == sorted(kept) and len(kept) == 7  # 6 convs + 1 shortcut
    assert mixed.info.quantized_layers == built.info.quantized_layers - 7 - 3  # and its 3 residual adds
    x = calib256.images[:16]
    rows = {name: {r.tensor: r for r in target.layer_errors(r20, result, x)}
            for name, result in (("int8", built), ("mixed", mixed))}
    add = "/layer3/layer3.2/Add_output_0"  # the last residual add: its own noise (fall) was int8's
    assert rows["mixed"][add].fall_db < rows["int8"][add].fall_db
    with pytest.raises(DGHError, match="names no layer of the exported model: layer9"):
        get_target("tensorrt-int8", float_layers="layer9").preflight(r20)


class ShuffleLike(torch.nn.Module):
    """Reads its batch size as a Python number, as ShuffleNetV2's channel shuffle does (``x.data.size()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        b, c, h, w = y.data.size()
        return y.reshape(b * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, c // 2, h, w)[0]


def test_a_traced_batch_size_is_exported_static_and_run_in_chunks(tmp_path: Path) -> None:
    """The tensorrt-int8 export asks for a dynamic batch; a graph that fixes its batch inside is written
    with batch 1 instead (not left to fail on the calibrator's batches), and runs any batch in chunks."""
    from dgh_deploy.onnx_export import export_onnx

    model = load_model(ShuffleLike(), imgsz=16)
    path = export_onnx(model, tmp_path / "m.onnx", dynamic_batch=True)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1  # static
    x = np.random.default_rng(0).random((3, 3, 16, 16), np.float32)
    got = OnnxRuntimeRunner(path).infer(x)[0]
    np.testing.assert_allclose(got, TorchRunner(model.module).infer(x)[0], atol=1e-5)
    plain = export_onnx(load_model(torch.nn.Conv2d(3, 4, 3), imgsz=16), tmp_path / "c.onnx", dynamic_batch=True)
    assert onnx.load(str(plain)).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
