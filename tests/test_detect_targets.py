"""Detectors through the tflite-int8 and tensorrt-int8 targets, end to end with ``dgh_deploy.deploy``.

An Ultralytics anchor-free YOLOv8n built from its YAML (random weights: no accuracy claim) at
96x96 goes through DGH generation (2 iterations) and both targets; the second target reuses the
cached calibration set. tflite-int8 converts with the converter this venv has (CI runs this file
in both venvs). The checks are structural: what an edge engineer verifies before
flashing a model (integer-only ops, int8 I/O, the raw maps in PyTorch's order, TensorRT's Q/DQ rules).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import dgh_deploy
from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.cli import main
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.loading import load_model
from dgh_deploy.reporting.report import Report
from dgh_deploy.runtime.base import TorchRunner
from dgh_deploy.runtime.litert_runner import LiteRTRunner, open_interpreter
from dgh_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from dgh_deploy.targets import get_target
from dgh_deploy.targets.tflite.integer_ops import check_full_integer, io_dtypes, list_float_ops
from dgh_deploy.targets.tflite.layer_sqnr import layer_sqnr
from dgh_deploy.targets.tflite.silu_floor import FlooredSiLU, floor_silu
from dgh_deploy.tasks.ultralytics_format import with_layout

IMGSZ = 96
ANCHORS = sum((IMGSZ // s) ** 2 for s in (8, 16, 32))  # 144 + 36 + 9
NC = 80


@pytest.fixture(scope="module")
def v8() -> LoadedModel:
    torch.manual_seed(0)
    return load_model("yolov8n.yaml", imgsz=IMGSZ)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both targets, and tensorrt-int8 with the maps layout, on the same generated set (the later jobs hit
    the cache): {target[:layout]: (report, out dir)}."""
    root = tmp_path_factory.mktemp("detect-targets")
    common = dict(model="yolov8n.yaml", imgsz=IMGSZ, calib="dgh", iters=2, n_images=8, cache_dir=str(root / "cache"),
                  human_report=False, threads=2)
    out: dict[str, Any] = {}
    for name in ("tflite-int8", "tensorrt-int8", "tensorrt-int8:maps"):
        target, _, layout = name.partition(":")
        torch.manual_seed(0)  # the YAML model's random weights: the same model for every job
        folder = root / name.replace(":", "-")
        settings = {"layout": layout} if layout else {}
        out[name] = (dgh_deploy.deploy(target=target, out=str(folder), **common, **settings).report, folder)
    return out


def _written(report: Report, folder: Path) -> Report:
    on_disk = Report.read(folder / "report.json")
    assert on_disk.target.name == report.target.name and on_disk.model.task == "detect"
    for role, art in on_disk.artifacts.items():
        assert (folder / art.path).is_file() and art.bytes > 0, role
    return on_disk


# --- tflite-int8 ---------------------------------------------------------------------------------------


@pytest.mark.slow  # shares one DGH generation and two conversions (~100 s)
def test_tflite_detector_is_full_integer_and_ends_at_its_raw_maps(jobs: dict[str, Any], v8: LoadedModel) -> None:
    """tflite-int8's default layout: the file ends at the head's six raw maps (DFL box logits and class
    logits per level), each with its own int8 scale, in PyTorch's order and layout; the host decodes them."""
    report, folder = jobs["tflite-int8"]
    rep = _written(report, folder)
    assert rep.model.fingerprint == v8.fingerprint()  # the same random weights as the fixture's
    assert rep.calibration.source == "dgh" and rep.calibration.images == 8
    assert rep.target.facts.layout == "maps"
    int8 = folder / rep.artifacts["model"].path
    via_onnx = {"onnx"} if rep.target.facts.converter == "onnx2tf" else set()  # litert-torch needs no ONNX
    assert {"model", "float_model", *via_onnx} <= set(rep.artifacts)

    assert list_float_ops(int8) == [] and check_full_integer(int8, "int8") == []
    assert io_dtypes(int8) == {"inputs": ["int8"], "outputs": ["int8"] * 6}

    # Float parity was checked per map, each against its own scale.
    parity = rep.target.facts.float_parity
    assert parity["passed"] and len(parity["tolerance"]) == 6
    assert all(e <= t for e, t in zip(parity["max_abs_error"], parity["tolerance"], strict=True))
    assert len(set(parity["tolerance"])) > 1

    # Both runners hand back the maps NCHW like PyTorch, box and class logits per level; the float file
    # matches PyTorch on fresh inputs, and the int8 file's maps decode to boxes near float's.
    maps = with_layout(v8, "maps")
    x = np.random.default_rng(1).uniform(0, 1, (2, 3, IMGSZ, IMGSZ)).astype(np.float32)
    shapes = [(c, IMGSZ // s, IMGSZ // s) for s in (8, 16, 32) for c in (64, NC)]
    ref = TorchRunner(maps.module).infer(x)
    flt = LiteRTRunner(folder / rep.artifacts["float_model"].path, 2, shapes).infer(x)
    q = LiteRTRunner(int8, 2, shapes).infer(x)
    assert [o.shape for o in q] == [o.shape for o in ref] == [(2, *s) for s in shapes]
    for r, f in zip(ref, flt, strict=True):
        np.testing.assert_allclose(f, r, atol=1e-3 * float(np.abs(r).max()))
    boxes, _ = maps.module.decode_outputs(ref, maps.imgsz)
    q_boxes, _ = maps.module.decode_outputs(q, maps.imgsz)
    assert boxes.shape == (2, 4, ANCHORS)
    assert (q_boxes - boxes).abs().mean() < 0.1 * boxes.abs().mean()

    # The data-free check decoded both and compared boxes and scores; the contract says how to decode.
    assert {"boxes_sqnr_db", "scores_sqnr_db", "detection_agreement"} <= set(rep.metrics.data_free or {})
    meanings = [o.meaning for o in rep.contract.outputs]
    assert len(meanings) == 6 and "softmax over the bins" in meanings[0] and "sigmoid" in meanings[1]


@pytest.mark.slow  # shares one DGH generation and two conversions (~100 s)
def test_tflite_sigmoids_are_int8_logistic_and_silu_inputs_are_floored(jobs: dict[str, Any]) -> None:
    report, folder = jobs["tflite-int8"]
    rewrites = report.target.facts.export_rewrites
    assert rewrites["silu_floor"] == 8.0 and rewrites["silu_layers"] > 50
    assert all(d <= t for d, t in zip(rewrites["max_abs_deviation"], rewrites["tolerance"], strict=True))

    it = open_interpreter(folder / report.artifacts["model"].path, delegates=False)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    kinds = [op["op_name"] for op in ops]
    assert kinds.count("LOGISTIC") >= rewrites["silu_layers"] and kinds.count("MAXIMUM") >= rewrites["silu_layers"]
    for op in ops:
        out = tensors[int(op["outputs"][0])]["quantization_parameters"]
        if op["op_name"] == "LOGISTIC":  # TFLite's fixed int8 sigmoid output: scale 1/256, zero point -128
            assert out["scales"][0] == pytest.approx(1 / 256) and out["zero_points"][0] == -128
        if op["op_name"] == "MAXIMUM":  # the floor: its input (a conv output) shares its clamped range
            inp = tensors[int(op["inputs"][0])]["quantization_parameters"]
            assert inp["scales"][0] == out["scales"][0] and inp["zero_points"][0] == out["zero_points"][0]
            assert (-128 - out["zero_points"][0]) * out["scales"][0] >= -8.0 - out["scales"][0]


@pytest.mark.slow  # shares one DGH generation and two conversions (~100 s)
def test_layer_sqnr_walks_the_int8_graph_against_its_float_twin(jobs: dict[str, Any]) -> None:
    report, folder = jobs["tflite-int8"]
    int8 = folder / report.artifacts["model"].path
    x = np.random.default_rng(3).uniform(0, 1, (1, 3, IMGSZ, IMGSZ)).astype(np.float32)
    rows = layer_sqnr(folder / report.artifacts["float_model"].path, int8, x)
    n_ops = len(open_interpreter(int8, delegates=False)._get_ops_details())
    assert len(rows) > 0.9 * n_ops and [r.index for r in rows] == sorted(r.index for r in rows)
    assert all(r.scale > 0 for r in rows)  # every tensor is int8 (QUANTIZE of the input aside, not an op output)
    assert all(r.scale == pytest.approx(1 / 256) for r in rows if r.op == "LOGISTIC")
    assert all(r.float_min >= -8.0 - 1e-5 for r in rows if r.op == "MAXIMUM")  # the SiLU floor, in float too
    first = next(r for r in rows if r.op == "CONV_2D")
    assert 15.0 < first.sqnr_db < 80.0  # int8 noise measured: not zero, not garbage


def test_silu_floor_is_dropped_when_it_would_move_the_outputs(v8: LoadedModel) -> None:
    """Inputs all far below the floor: SiLU's tiny outputs would become -floor * sigmoid(-floor)."""
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.SiLU())
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].bias.fill_(-20.0)
    model = LoadedModel(module=net.eval(), name="deep-negative", task="classify", imgsz=(8, 8),
                        preprocessing=v8.preprocessing)
    target = get_target("tflite-int8")
    module, info = target.export_module(model, CalibrationSet(np.zeros((2, 3, 8, 8), np.float32), "noise"))
    assert info["silu_floor"] is None and "too much" in info["reason"]
    assert not any(isinstance(m, FlooredSiLU) for m in module.modules())
    # ...and a model's shared nn.SiLU is replaced at every place it is applied.
    shared = nn.SiLU()
    twice = nn.Sequential(nn.Conv2d(3, 3, 1), shared, nn.Conv2d(3, 3, 1), shared)
    assert floor_silu(twice) == 2 and not any(type(m) is nn.SiLU for m in twice.modules())


# --- tensorrt-int8 -------------------------------------------------------------------------------------


@pytest.mark.slow  # shares one DGH generation and two conversions (~100 s)
def test_tensorrt_detector_qdq_follows_tensorrt_rules(jobs: dict[str, Any], v8: LoadedModel) -> None:
    report, folder = jobs["tensorrt-int8"]
    rep = _written(report, folder)
    assert rep.calibration.cached and rep.calibration.images == 8  # the tflite job's set
    assert {"model", "float_model", "cache", "build_script"} <= set(rep.artifacts)
    info = rep.target.facts
    # detectors: percentile 99.999 (entropy clips the strong responses that make confident boxes)
    assert (info.act_range, info.percentile, info.act_range_default) == ("percentile", 99.999, True)

    model = onnx.load(str(folder / rep.artifacts["model"].path))
    onnx.checker.check_model(model, full_check=True)
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}

    def dq(name: str) -> bool:
        return name in producer and producer[name].op_type == "DequantizeLinear"

    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits[n.input[2]]
            assert zp.dtype == np.int8 and not zp.any() and (inits[n.input[1]] > 0).all()  # symmetric, zp 0
    convs = [n for n in g.node if n.op_type == "Conv"]
    dfl = [n for n in convs if producer[n.input[0]].op_type == "Softmax"]
    assert len(dfl) == 1 and not dq(dfl[0].input[0]) and not dq(dfl[0].input[1])  # DFL decoding stays float
    assert all(dq(n.input[0]) and dq(n.input[1]) for n in convs if n not in dfl)
    assert set(info.float_layers) == {dfl[0].name} | {n.name for n in g.node if n.op_type == "Add"
                                                        and not any(dq(i) for i in n.input)
                                                        and all(i in producer for i in n.input)}
    # Residual joins (C2f bottlenecks in the backbone): both inputs quantized; the decode's lt + rb is not.
    residual = [n for n in g.node if n.op_type == "Add" and dq(n.input[0]) and dq(n.input[1])]
    bottlenecks = sum(getattr(m, "add", False) for m in v8.module.modules())
    assert len(residual) == bottlenecks > 0
    # No Q/DQ of its own on any Concat input: a Concat feeding a Conv is quantized once, at its output.
    assert not any(dq(i) for n in g.node if n.op_type == "Concat" for i in n.input)
    assert any(dq(n.input[0]) and producer[producer[n.input[0]].input[0]].input[0] in
               {c.output[0] for c in g.node if c.op_type == "Concat"} for n in convs)
    # Outputs stay float, in PyTorch's order, and the Q/DQ model runs on ONNX Runtime.
    assert [o.name for o in g.output] == ["output0", "output1"]
    x = np.random.default_rng(2).uniform(0, 1, (2, 3, IMGSZ, IMGSZ)).astype(np.float32)
    out = OnnxRuntimeRunner(folder / rep.artifacts["model"].path).infer(x)
    assert [o.shape for o in out] == [(2, 4, ANCHORS), (2, NC, ANCHORS)]
    assert (folder / rep.artifacts["cache"].path).read_text().startswith("TRT-")


@pytest.mark.slow  # shares one DGH generation and two conversions (~100 s)
def test_tensorrt_maps_layout_ends_at_float_maps_the_host_decodes(jobs: dict[str, Any], v8: LoadedModel) -> None:
    """``--layout maps`` on tensorrt-int8: the Q/DQ file ends at the head's six raw maps (float, as every
    TensorRT output is), in PyTorch's order; decoded on the host they give the split file's boxes and scores."""
    report, folder = jobs["tensorrt-int8:maps"]
    rep = _written(report, folder)
    assert rep.target.facts.layout == "maps" and rep.calibration.cached
    path = folder / rep.artifacts["model"].path
    assert len(onnx.load(str(path)).graph.output) == 6
    x = np.random.default_rng(3).uniform(0, 1, (2, 3, IMGSZ, IMGSZ)).astype(np.float32)
    maps = OnnxRuntimeRunner(path).infer(x)
    assert [o.shape for o in maps] == [(2, c, IMGSZ // s, IMGSZ // s) for s in (8, 16, 32) for c in (64, NC)]
    boxes, scores = with_layout(v8, "maps").module.decode_outputs(maps, (IMGSZ, IMGSZ))
    split_rep, split_folder = jobs["tensorrt-int8"]
    split_boxes, split_scores = OnnxRuntimeRunner(split_folder / split_rep.artifacts["model"].path).infer(x)
    np.testing.assert_allclose(boxes.numpy(), split_boxes, atol=1e-3 * float(np.abs(split_boxes).max()))
    np.testing.assert_allclose(scores.numpy(), split_scores, atol=1e-3)
    meanings = [o.meaning for o in rep.contract.outputs]
    assert len(meanings) == 6 and "softmax over the bins" in meanings[0] and "sigmoid" in meanings[1]


# --- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["yolov8n.yaml", "yolov5n"])
def test_detector_with_task_classify_is_one_line_exit_2(which: str, tmp_path: Path, request: pytest.FixtureRequest,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--model", which, "--task", "classify", "--imgsz", "96", "--calib", "noise", "--out", str(tmp_path / "o")]
    if which == "yolov5n":
        assets: Path = request.getfixturevalue("assets")
        args += ["--weights", str(assets / "yolov5n" / "yolov5n-coco-v6.1.pt")]
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("dgh-deploy: error: --task classify given")
    assert "is a detect model" in err and "use --task detect" in err
    assert not (tmp_path / "o").exists()
