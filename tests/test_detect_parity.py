"""One mAP, whoever scores it: the job's detection scorer against Ultralytics' validator on one file.

The float YOLOv5n at 320, as the ONNX file ``yolo export format=onnx`` would write (one
``[1, 84, anchors]`` output in input pixels, Ultralytics' metadata), scored on coco128 val by
our evaluation (the validator's NMS settings) and by ``YOLO(path).val``: the two mAP50-95s must
agree within 0.1 points. Before the scorer followed Ultralytics' preprocessing (OpenCV's bilinear
resize, short side rounded up) and scored in input pixels, they were 0.32 apart here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dgh_deploy.loaded_model import LoadedModel

IMGSZ = 320
PARITY = 0.1  # mAP50-95 points: a gate set on either number holds on the other


def float_ultralytics_onnx(model: LoadedModel, dst: Path) -> Path:
    """The float deploy form as Ultralytics' own ONNX: boxes to pixels, joined with the scores, metadata."""
    import onnx

    from dgh_deploy.onnx_export import export_onnx
    from dgh_deploy.runtime.base import TorchRunner
    from dgh_deploy.targets.tensorrt.ultralytics_file import join_outputs
    from dgh_deploy.tasks.ultralytics_format import model_layout, ultralytics_metadata

    layout = model_layout(model)
    split = export_onnx(model, dst.with_name("split.onnx"))
    proto = onnx.load(str(split))
    anchors = int(TorchRunner(model.module).infer(model.dummy_input().numpy())[0].shape[-1])
    join_outputs(proto, model.imgsz, layout.nc, anchors)
    metadata = ultralytics_metadata(model, layout.nc, int(model.extra.get("stride", 32)))
    metadata["args"]["int8"] = False
    for key, value in metadata.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, str(value)
    onnx.save(proto, str(dst))
    return dst


@pytest.fixture(scope="module")
def yolov5n(assets: Path) -> LoadedModel:
    pytest.importorskip("ultralytics", reason="Ultralytics' validator is the reference")
    pytest.importorskip("onnxruntime", reason="the float file runs on ONNX Runtime for both scorers")
    from dgh_deploy.loading import load_model

    return load_model("yolov5n", weights=str(assets / "yolov5n" / "yolov5n-coco-v6.1.pt"), imgsz=IMGSZ)


def test_float_yolov5n_scores_as_ultralytics_validator_does(yolov5n: LoadedModel, assets: Path,
                                                            tmp_path: Path) -> None:
    from dgh_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
    from dgh_deploy.runtime.split_view import SplitView
    from dgh_deploy.tasks.ultralytics_format import model_layout
    from dgh_deploy.verification.ultralytics_val import compare_with_ultralytics

    path = float_ultralytics_onnx(yolov5n, tmp_path / "yolov5n_float.onnx")
    runner = SplitView(OnnxRuntimeRunner(path, threads=1), model_layout(yolov5n), pixels=yolov5n.imgsz)
    compared = compare_with_ultralytics(yolov5n, runner, path, str(assets / "coco128" / "coco128.yaml"), None)
    assert compared.theirs["images"] == compared.ours["images"] == 128
    assert abs(compared.difference) <= PARITY, compared
    assert 27.0 < compared.ours["mAP50-95"] < 30.0, compared  # the trained model, not an empty agreement
    assert abs(compared.ours["mAP50"] - compared.theirs["mAP50"]) <= 2 * PARITY, compared


@pytest.mark.parametrize("size", [(320, 320), (256, 320), (320, 192)])
def test_letterbox_gives_ultralytics_val_inputs_and_labels(size: tuple[int, int], assets: Path) -> None:
    """Our canvases and labels on them are, pixel for pixel, those of Ultralytics' own val dataset."""
    pytest.importorskip("ultralytics", reason="Ultralytics' dataset is the reference")
    from dgh_deploy.preprocessing import letterbox, open_image
    from dgh_deploy.tasks.detect_data import read_data_yaml

    data = read_data_yaml(assets / "coco128" / "coco128.yaml", "val")
    theirs = _ultralytics_val_items(assets / "coco128" / "coco128.yaml", size)
    for k in range(0, len(data.images), 16):
        canvas, placement = letterbox(np.asarray(open_image(data.images[k])), size)
        item = theirs[data.images[k].name]
        np.testing.assert_array_equal(canvas, item["img"].numpy().transpose(1, 2, 0), err_msg=data.images[k].name)
        assert placement.pad == tuple(item["ratio_pad"][1])
        h, w = size
        cx, cy, bw, bh = (item["bboxes"].numpy() * [w, h, w, h]).T  # normalised to the canvas
        np.testing.assert_allclose(placement.labels_to_input(data.labels[k][:, 1:5]),
                                   np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1), atol=1e-3)


def _ultralytics_val_items(data_yaml: Path, size: tuple[int, int]) -> dict[str, dict]:
    """Ultralytics' validation dataset at ``size`` (no rectangular batches: a fixed-size file), by image name."""
    from unittest import mock

    import ultralytics.data.utils as data_utils
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset

    cfg = get_cfg(overrides={"task": "detect", "mode": "val", "imgsz": list(size), "rect": False, "batch": 1})
    with mock.patch.object(data_utils, "is_dir_writeable", lambda path: False):  # no label cache in the assets
        data = data_utils.check_det_dataset(str(data_yaml))
        dataset = build_yolo_dataset(cfg, data["val"], 1, data, mode="val", stride=32)
        return {Path(item["im_file"]).name: item for item in (dataset[i] for i in range(len(dataset)))}
