"""YOLO deploy forms: structure against Ultralytics, decoding, ONNX parity, the generation form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dgh_deploy.errors import DGHError
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.loading import load_model
from dgh_deploy.tasks import get_task
from dgh_deploy.tasks.detect_layout import DetectLayout, infer_layout

IMGSZ = 320


@pytest.fixture(scope="module")
def v5_weights(assets: Path) -> str:
    return str(assets / "yolov5n" / "yolov5n-coco-v6.1.pt")


@pytest.fixture(scope="module")
def v5(v5_weights: str) -> LoadedModel:
    return load_model("yolov5n", v5_weights, imgsz=IMGSZ)


@pytest.fixture(scope="module")
def v8() -> LoadedModel:
    torch.manual_seed(0)
    return load_model("yolov8n.yaml", imgsz=IMGSZ)


@pytest.fixture(scope="module")
def street(assets: Path, v5: LoadedModel) -> np.ndarray:
    """Two real COCO images in model input space: detectors give real boxes and scores on them."""
    files = sorted((assets / "coco128" / "images" / "val2017").glob("*.jpg"))[:2]
    return np.stack([v5.preprocessing.load(str(f), v5.imgsz) for f in files])


def test_a_yaml_without_weights_is_one_model_and_leaves_the_callers_seed_alone() -> None:
    """Random weights from a fixed seed: every build of the yaml (a job, its resume, a bench's
    second converter) sees the same model, and the caller's random stream goes on as if untouched."""
    torch.manual_seed(1)
    first = load_model("yolov8n.yaml", imgsz=64)
    after_load = torch.rand(3)
    torch.manual_seed(1)
    assert torch.equal(torch.rand(3), after_load)
    torch.manual_seed(2)
    second = load_model("yolov8n.yaml", imgsz=64)
    a, b = first.module.state_dict(), second.module.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(v.float().abs().sum() > 0 for v in a.values())


def test_yolov5n_backbone_and_neck_are_ultralytics_layers() -> None:
    from ultralytics.nn.tasks import DetectionModel

    from dgh_deploy.models.yolov5 import yolov5n

    ours = {k: tuple(v.shape) for k, v in yolov5n().state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in DetectionModel("yolov5n.yaml", verbose=False).state_dict().items()}
    body = {k: s for k, s in theirs.items() if not k.startswith("model.24.")}
    assert {k: s for k, s in ours.items() if not k.startswith("model.24.")} == body
    assert len(body) == 342
    head = {k: s for k, s in ours.items() if k.startswith("model.24.")}
    assert head == {"model.24.anchors": (3, 3, 2),
                    **{f"model.24.m.{i}.weight": (255, c, 1, 1) for i, c in enumerate((64, 128, 256))},
                    **{f"model.24.m.{i}.bias": (255,) for i in range(3)}}


def test_yolov5n_checkpoint_fits_exactly(v5: LoadedModel, v5_weights: str) -> None:
    ckpt = torch.load(v5_weights, map_location="cpu", weights_only=True)["state_dict"]
    own = v5.module.state_dict()
    assert set(own) == set(ckpt)
    for k, v in ckpt.items():
        assert own[k].dtype == torch.float32 or not v.is_floating_point()
        assert torch.equal(own[k], v.float()), k
    assert v5.module.strides == [8, 16, 32] and v5.task == "detect" and v5.imgsz == (IMGSZ, IMGSZ)


def test_yolov5n_decoding_follows_the_yolov5_formula(v5: LoadedModel, street: np.ndarray) -> None:
    """Decode the raw head maps independently (5-D view, as YOLOv5 does) and compare."""
    net, x = v5.module, torch.from_numpy(street)
    with torch.no_grad():
        out = torch.cat(net(x), 1)  # the default layout: boxes, scores
        feats = net.features(x)
    rows = []
    for i, (conv, f) in enumerate(zip(net.head.m, feats, strict=True)):
        with torch.no_grad():
            p = conv(f)
        n, _, gh, gw = p.shape
        p = p.view(n, 3, 85, gh, gw).permute(0, 1, 3, 4, 2).sigmoid()
        gy, gx = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        s = [8, 16, 32][i]
        xy = (2 * p[..., :2] - 0.5 + torch.stack((gx, gy), -1)) * s
        wh = (2 * p[..., 2:4]) ** 2 * net.head.anchors[i].view(1, 3, 1, 1, 2) * s
        rows.append(torch.cat((xy / IMGSZ, wh / IMGSZ, p[..., 5:] * p[..., 4:5]), -1).reshape(n, -1, 84))
    ref = torch.cat(rows, 1).transpose(1, 2)
    assert out.shape == (2, 84, 3 * (40 * 40 + 20 * 20 + 10 * 10))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert out[:, 4:].max() > 0.5  # real images: confident detections exist


def test_anchor_free_deploy_form_is_ultralytics_decode_normalised() -> None:
    from ultralytics.nn.tasks import DetectionModel

    from dgh_deploy.models.yolo import deploy_form_of

    torch.manual_seed(0)
    dm = DetectionModel("yolov8n.yaml", verbose=False).eval()
    x = torch.rand(1, 3, 256, 192)
    with torch.no_grad():
        theirs = dm(x)[0]
        ours = torch.cat(deploy_form_of(dm)(x), 1)  # type: ignore[misc]
    scale = torch.tensor([192, 256, 192, 256]).view(1, 4, 1)
    torch.testing.assert_close(ours[:, :4] * scale, theirs[:, :4], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(ours[:, 4:], theirs[:, 4:])


@pytest.mark.parametrize("which", ["v5", "v8"])
def test_deploy_form_exports_to_onnx_and_runs_the_same_on_onnxruntime(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    import onnxruntime as ort

    from dgh_deploy.onnx_export import export_onnx
    from dgh_deploy.runtime.base import TorchRunner

    model: LoadedModel = request.getfixturevalue(which)
    x = request.getfixturevalue("street") if which == "v5" else np.random.default_rng(0).random(
        (1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    path = export_onnx(model, tmp_path / f"{which}.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = [sess.run(None, {"images": x[i : i + 1]}) for i in range(len(x))]
    want = TorchRunner(model.module).infer(x)
    assert [o.name for o in sess.get_outputs()] == ["output0", "output1"] and len(want) == 2
    for k in range(2):
        np.testing.assert_allclose(np.concatenate([g[k] for g in got]), want[k], atol=2e-5, rtol=1e-4)
    boxes, scores = model.module.detect_layout.unpack(want)
    assert boxes.shape[1] == 4 and scores.shape[1] == 80 and 0 <= scores.min() and scores.max() <= 1


def test_yolov5_export_form_splits_each_head_conv(v5: LoadedModel, street: np.ndarray, tmp_path: Path) -> None:
    """Box, objectness and class logits leave the head as separate convs (own int8 scales), same outputs."""
    import onnx

    from dgh_deploy.models.yolov5 import PartConvs
    from dgh_deploy.onnx_export import export_onnx

    split = v5.for_export()
    assert all(isinstance(m, PartConvs) for m in split.head.m)
    assert not any(isinstance(m, PartConvs) for m in v5.module.head.m)  # the original stays as loaded
    x = torch.from_numpy(street)
    with torch.no_grad():
        for a, b in zip(split(x), v5.module(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
        for a, b in zip(split.head_maps(x), v5.module.head_maps(x), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    graph = onnx.load(str(export_onnx(v5, tmp_path / "v5.onnx"))).graph
    inits = {i.name: list(i.dims) for i in graph.initializer}
    out_channels = [inits[n.input[1]][0] for n in graph.node if n.op_type == "Conv"]
    # per level: box (3 anchors x 4), objectness (3), classes (3 x 80); no 255-channel conv left
    assert [out_channels.count(c) for c in (12, 3, 240, 255)] == [3, 3, 3, 0]


def test_one_tensor_layout_exports_one_output(v8: LoadedModel, tmp_path: Path) -> None:
    import copy

    import onnx

    from dgh_deploy.onnx_export import export_onnx

    whole = copy.deepcopy(v8)
    whole.module.detect_layout = DetectLayout(80, split=False)
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        parts, one = v8.module(x), whole.module(x)
    assert [tuple(p.shape) for p in parts] == [(1, 4, 2100), (1, 80, 2100)] and one.shape == (1, 84, 2100)
    torch.testing.assert_close(torch.cat(parts, 1), one)
    proto = onnx.load(str(export_onnx(whole, tmp_path / "one.onnx")))
    assert [o.name for o in proto.graph.output] == ["output0"]
    assert infer_layout([one.numpy()]) == whole.module.detect_layout


def test_layouts_pack_and_unpack_the_same_detections() -> None:
    b, o, c = torch.rand(2, 4, 7), torch.rand(2, 1, 7), torch.rand(2, 3, 7)
    for layout in (DetectLayout(3, split=False), DetectLayout(3), DetectLayout(3, objectness=True)):
        packed = layout.pack(b, c, o)
        outs = list(packed) if isinstance(packed, tuple) else [packed]
        assert infer_layout(outs) == layout
        boxes, scores = layout.unpack(outs)
        torch.testing.assert_close(boxes, b)
        torch.testing.assert_close(scores, c * o)
    with pytest.raises(DGHError, match="not the deploy layout"):
        DetectLayout(3, split=False).unpack([torch.rand(2, 9, 7)])
    with pytest.raises(DGHError, match="not the deploy layout"):
        DetectLayout(3).unpack([torch.rand(2, 7, 7)])


@pytest.mark.parametrize("which,kinds", [("v5", (12, 3, 240)), ("v8", (64, 80))])
def test_generation_form_returns_raw_head_maps(which: str, kinds: tuple[int, ...],
                                               request: pytest.FixtureRequest) -> None:
    model: LoadedModel = request.getfixturevalue(which)
    task = get_task("detect")
    gen = task.prepare_for_generation(model)
    shared = {id(m) for m in model.module.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert shared and shared == {id(m) for m in gen.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    x = torch.rand(1, 3, IMGSZ, IMGSZ, requires_grad=True)
    maps = task.stretch_outputs(gen(x))
    assert [m[0].numel() // (m.shape[-2] * m.shape[-1]) for m in maps] == list(kinds) * 3  # channels per map
    assert [m.shape[-1] for m in maps[:: len(kinds)]] == [40, 20, 10]
    assert min(float(m.detach().min()) for m in maps) < 0  # logits, not sigmoid outputs
    sum(m.amax() - m.amin() for m in maps).backward()  # DGH's stretching loss reaches the pixels
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_model_without_a_detection_head_is_refused() -> None:
    from dgh_deploy.preprocessing import Preprocessing

    plain = LoadedModel(torch.nn.Conv2d(3, 8, 3), "plain", "detect", (64, 64), Preprocessing(resize="letterbox"))
    task = get_task("detect")
    with pytest.raises(DGHError, match="found no detection head") as err:
        task.prepare_for_generation(plain)
    assert "\n" not in str(err.value)
    with pytest.raises(DGHError, match="found no detection head"):
        task.stretch_outputs([torch.tensor(1.0)])


@pytest.mark.parametrize("which", ["v5", "v8"])
def test_maps_layout_ends_at_the_raw_maps_and_decodes_them_on_the_host(which: str, request: pytest.FixtureRequest,
                                                                      street: np.ndarray) -> None:
    """``maps``: the export form returns each level's 4-D raw maps; decoding them on the host gives the
    in-graph decode's boxes and scores. The caller's model, its fingerprint and DGH's maps stay as they were."""
    from dgh_deploy.tasks.detector import decodes_on_host
    from dgh_deploy.tasks.ultralytics_format import with_layout

    model: LoadedModel = request.getfixturevalue(which)
    maps = with_layout(model, "maps")
    assert decodes_on_host(maps.module) and not decodes_on_host(model.module)
    assert maps.fingerprint() == model.fingerprint() and with_layout(maps, "split").module.detect_layout == \
        model.module.detect_layout
    x = torch.from_numpy(street)
    with torch.no_grad():
        outs = maps.for_export()(x)
        split = model.module(x)
        for a, b in zip(maps.module.head_maps(x), model.module.head_maps(x), strict=True):  # what DGH stretches
            assert torch.equal(a, b)
    per_level = 3 if which == "v5" else 2  # box, objectness, class logits; or DFL box and class logits
    assert len(outs) == 3 * per_level and all(o.dim() == 4 for o in outs)
    assert [o.shape[-1] for o in outs[::per_level]] == [IMGSZ // s for s in (8, 16, 32)]
    boxes, scores = maps.module.decode_outputs([o.numpy() for o in outs], maps.imgsz)
    want_boxes, want_scores = model.module.detect_layout.unpack(split)
    torch.testing.assert_close(boxes, want_boxes, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores, want_scores, atol=1e-6, rtol=1e-4)
    meanings = maps.module.map_meanings(maps.imgsz)
    assert len(meanings) == len(outs) and all(f"stride {s}," in meanings[i * per_level]
                                             for i, s in enumerate((8, 16, 32)))


def test_each_target_picks_its_detector_layout(v8: LoadedModel) -> None:
    """tflite-int8 and ethos-u end a detector at its maps, tensorrt-int8 decodes in the graph; a layout
    asked for wins, a protocol detector has only maps, and a classifier is left alone."""
    from dgh_deploy.targets import get_target
    from dgh_deploy.tasks.detector import decodes_on_host
    from dgh_deploy.tasks.ultralytics_format import check_layout

    def ends_at_maps(target: str, **settings: str) -> bool:
        return decodes_on_host(get_target(target, **settings).deploy_form(v8).module)

    assert ends_at_maps("tflite-int8") and ends_at_maps("ethos-u") and not ends_at_maps("tensorrt-int8")
    assert not ends_at_maps("tflite-int8", layout="split") and ends_at_maps("tensorrt-int8", layout="maps")
    demo = load_model("demo")
    assert get_target("tflite-int8").deploy_form(demo) is demo
    protocol = load_model(str(Path(__file__).parents[1] / "examples" / "tiny_detector.py") + ":build")
    check_layout("maps", protocol, "tflite-int8")
    with pytest.raises(DGHError, match="--layout split needs boxes and scores inside the graph"):
        check_layout("split", protocol, "tflite-int8")
