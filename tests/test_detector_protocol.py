"""The detector protocol (dgh_deploy.tasks.detector) on the README's example detector and on Yolo-FastestV2.

``examples/tiny_detector.py`` (random weights: structure only, no accuracy claim) goes through
loading, generation and the targets: its int8 file ends at the raw head maps, which the job
decodes on the host with the detector's own ``decode``. An incomplete protocol is refused in one
line before anything is generated. Yolo-FastestV2 (the authors' network and COCO weights from a
checkout outside the repo; skipped without it) must score on coco128 through the protocol exactly
as through the authors' own decode code.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import dgh_deploy
from dgh_deploy.cli import main
from dgh_deploy.errors import DGHError
from dgh_deploy.loading import load_model
from dgh_deploy.preprocessing import Preprocessing, stretch
from dgh_deploy.runtime.base import TorchRunner
from dgh_deploy.tasks import get_task
from dgh_deploy.tasks.detector import HostDecodeDetector

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = f"{REPO / 'examples' / 'tiny_detector.py'}:build"
FASTEST = REPO / "bench" / "zoo" / "yolo_fastestv2.py"


def test_example_loads_as_a_host_decoded_detector() -> None:
    model = load_model(EXAMPLE, task="detect")
    assert model.task == "detect" and model.imgsz == (160, 160) and model.extra["stride"] == 32
    assert isinstance(model.module, HostDecodeDetector)
    maps = TorchRunner(model.module).infer(model.dummy_input(2).numpy())
    assert [m.shape for m in maps] == [(2, 4, 10, 10), (2, 80, 10, 10), (2, 4, 5, 5), (2, 80, 5, 5)]
    boxes, scores = model.module.decode_outputs(maps, model.imgsz)
    assert boxes.shape == (2, 4, 125) and scores.shape == (2, 80, 125)
    assert 0.0 <= float(scores.min()) and float(scores.max()) <= 1.0


@pytest.mark.parametrize("spec", ["yolov5n", "yolov8n.yaml"])
def test_builtin_heads_implement_the_protocol(spec: str) -> None:
    """One path: the YOLOv5 and Ultralytics heads state the same protocol, and what their graph outputs is
    their own decode of their own head maps."""
    from dgh_deploy.models.yolov5 import yolov5n
    from dgh_deploy.tasks.detector import final_scores, missing_parts

    module = yolov5n().eval() if spec == "yolov5n" else load_model(spec, imgsz=128).module
    assert missing_parts(module) == []
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        out = module(x)
        deployed = module.detect_layout.unpack(list(out) if isinstance(out, tuple) else [out])
        decoded = final_scores(module.decode(module.head_maps(x), (128, 128)))
    for a, b in zip(deployed, decoded, strict=True):
        assert torch.allclose(torch.as_tensor(a), b, atol=1e-6)


def test_generation_stretches_the_head_maps() -> None:
    model = load_model(EXAMPLE)
    task = get_task("detect", model)
    net = task.prepare_for_generation(model)
    out = task.stretch_outputs(net(model.dummy_input()))
    assert [tuple(t.shape[1:2]) for t in out] == [(4,), (80,), (4,), (80,)]  # raw maps, before any sigmoid


def _write(tmp_path: Path, body: str) -> str:
    f = tmp_path / "det.py"
    f.write_text("import torch\nfrom torch import nn\n\n" + textwrap.dedent(body))
    return f"{f}:build"


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ("""
         class D(nn.Module):
             strides = (32,)
             def __init__(self):
                 super().__init__()
                 self.c = nn.Conv2d(3, 4, 32, 32)
             def head_maps(self, x):
                 return [self.c(x)]
         def build():
             return D()
         """, ["not a complete detector", "num_classes, input_size, decode"]),
        ("""
         class D(nn.Module):
             num_classes, strides, input_size = 2, (32,), 64
             def __init__(self):
                 super().__init__()
                 self.c = nn.Conv2d(3, 6, 32, 32)
             def head_maps(self, x):
                 return [self.c(x)]
             def decode(self, maps, hw):
                 return maps[0].flatten(2), maps[0].flatten(2)
         def build():
             return D()
         """, ["decode returned [6, 6] channels, not 4 (boxes), 2 (num_classes)"]),
        ("""
         class D(nn.Module):
             num_classes, strides, input_size, channel_order = 2, (32,), 64, "YUV"
             def head_maps(self, x):
                 return [x]
             def decode(self, maps, hw):
                 return maps
         def build():
             return D()
         """, ["states its preprocessing wrongly", "YUV"]),
    ],
)
def test_incomplete_protocol_is_refused_in_one_line_before_generation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, needles: list[str]
) -> None:
    out = tmp_path / "out"
    start = time.perf_counter()
    code = main(["--model", _write(tmp_path, body), "--target", "sim", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert all(n in err for n in needles), err
    assert "Traceback" not in err and not out.exists()
    assert time.perf_counter() - start < 30  # found while loading, long before any generation


def test_a_plain_module_with_task_detect_names_the_protocol(tmp_path: Path) -> None:
    spec = _write(tmp_path, """
        class D(nn.Module):
            task = "detect"
            def forward(self, x):
                return x
        def build():
            return D()
        """)
    with pytest.raises(DGHError, match="has no num_classes, strides, input_size, head_maps, decode"):
        load_model(spec)


def test_bgr_and_stretch_preprocessing() -> None:
    pre = Preprocessing(channel_order="BGR", resize="stretch")
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    x = pre.normalise(rgb)
    assert x[2].min() == 1.0 and x[0].max() == 0.0  # red lands in the model's third channel
    assert np.array_equal(pre.to_pixels(x), rgb)
    canvas, placement = stretch(rgb, (8, 8))
    assert canvas.shape == (8, 8, 3) and placement.pad == (0, 0)
    box = placement.labels_to_input(np.array([[0.5, 0.5, 1.0, 1.0]]))
    assert np.allclose(box, [[0, 0, 8, 8]])  # the whole image is the whole canvas, each axis its own gain
    assert "channel_order" not in repr(Preprocessing())  # RGB keeps the cache keys cut before BGR existed


def test_ultralytics_layout_is_refused_for_a_host_decoded_detector(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--model", EXAMPLE, "--target", "tflite-int8", "--layout", "ultralytics",
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "decoded on the host" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["sim", "tflite-int8"])
def test_example_runs_the_whole_job(tmp_path: Path, assets: Path, target: str) -> None:
    """Generation, conversion and the coco128 check; the int8 file's outputs are the raw maps."""
    result = dgh_deploy.deploy(model=EXAMPLE, target=target, calib="dgh", iters=2, n_images=8, threads=2,
                               val_data=str(assets / "coco128" / "coco128.yaml"), val_limit=8,
                               cache_dir=str(tmp_path / "cache"), out=str(tmp_path / target), human_report=True)
    report = result.report
    assert report.model.task == "detect" and report.metrics.quantized is not None
    assert report.metrics.quantized["images"] == 8
    outputs = report.contract.outputs
    assert len(outputs) == 4 and all("raw head map" in o.meaning for o in outputs)
    if target == "tflite-int8":
        assert all(o.dtype == "int8" and o.scale for o in outputs)  # each map keeps its own scale
    assert "boxes_sqnr_db" in report.metrics.data_free  # decoded on the host before comparing


# -- Yolo-FastestV2: the authors' network and weights, from a checkout outside the repo ----------------


def _fastest(func: str) -> Any:
    spec = f"{FASTEST}:{func}"
    try:
        return load_model(spec)
    except DGHError as exc:
        if "no Yolo-FastestV2 checkout" in str(exc):
            pytest.skip(str(exc))
        raise


def test_yolo_fastestv2_scores_as_the_authors_decode_does(assets: Path) -> None:
    ours, theirs = _fastest("build"), _fastest("build_with_authors_decode")
    assert ours.preprocessing.channel_order == "BGR" and ours.preprocessing.resize == "stretch"
    data = str(assets / "coco128" / "coco128.yaml")
    a = get_task("detect", ours).evaluate(TorchRunner(ours.module), ours, data)
    b = get_task("detect", theirs).evaluate(TorchRunner(theirs.module), theirs, data)
    assert a["images"] == b["images"] == 128
    assert abs(a["mAP50-95"] - b["mAP50-95"]) < 0.01 and abs(a["mAP50"] - b["mAP50"]) < 0.01
    assert a["mAP50"] > 25  # the authors' 24.1 mAP50 is on all of val2017; the trained model, not noise


def test_yolo_fastestv2_maps_decode_like_the_authors(assets: Path) -> None:
    ours, theirs = _fastest("build"), _fastest("build_with_authors_decode")
    x = torch.rand(2, 3, 352, 352)
    with torch.no_grad():
        maps = ours.module.head_maps(x)
        mine = ours.module.decode_outputs([m.numpy() for m in maps], (352, 352))
        ref = theirs.module.decode_outputs([m.numpy() for m in maps], (352, 352))
    order = lambda t: torch.sort(t.flatten())[0]  # noqa: E731  (anchor order differs; the values may not)
    for a, b in zip(mine, ref, strict=True):
        assert a.shape == b.shape
        assert torch.allclose(order(a), order(b), atol=1e-5)
