"""The Q/DQ detector ONNX as ``yolo export format=onnx`` writes it: ``--layout ultralytics`` on tensorrt-int8.

Ultralytics' ONNX backend hands the file's output to NMS as it is: one ``[N, 4 + nc, anchors]``
tensor, boxes ``cx cy w h`` in input pixels, then class scores; names, stride, input size and
task come from the file's ``metadata_props``. The Q/DQ graph already has float I/O and decodes the
boxes in float, so the Ultralytics file is that graph with two float ops appended (boxes times the
input size, then the join): its int8 part is the checked Q/DQ model's, node for node.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dgh_deploy.artifacts import atomic_path
from dgh_deploy.errors import DGHError
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.runtime.base import Runner, TorchRunner
from dgh_deploy.runtime.onnxruntime_runner import OnnxRuntimeRunner
from dgh_deploy.runtime.split_view import SplitView
from dgh_deploy.tasks.ultralytics_format import model_layout, ultralytics_metadata

OUTPUT_NAME = "detections"
IDENTITY_IMAGES = 4
# Two float ops after the same graph: only float rounding of the multiplication may differ.
IDENTITY_ATOL = 1e-4


def ultralytics_artifact(model: LoadedModel, qdq: Path, dst: Path, images: np.ndarray,
                         threads: int) -> tuple[Runner, dict[str, Any]]:
    """Write ``dst`` from the checked Q/DQ file ``qdq``, check it gives ``qdq``'s outputs on ``images``,
    and return its runner (in the model's layout) and the report's facts."""
    import onnx

    layout = model_layout(model)
    metadata = ultralytics_metadata(model, layout.nc, int(model.extra.get("stride", 32)))
    proto = onnx.load(str(qdq))
    anchors = int(TorchRunner(model.module).infer(model.dummy_input().numpy())[0].shape[-1])
    join_outputs(proto, model.imgsz, layout.nc, anchors)
    for key, value in metadata.items():  # as Ultralytics' exporter writes them: every value a string
        prop = proto.metadata_props.add()
        prop.key, prop.value = key, str(value)
    with atomic_path(dst) as tmp:
        onnx.save(proto, str(tmp))
    runner = SplitView(OnnxRuntimeRunner(dst, threads), layout, pixels=model.imgsz)
    images = images[:IDENTITY_IMAGES]
    worst = max(float(np.abs(a - b).max()) for a, b in
                zip(OnnxRuntimeRunner(qdq, threads).infer(images), runner.infer(images), strict=True))
    if worst > IDENTITY_ATOL:
        raise DGHError(f"the Ultralytics-layout ONNX does not reproduce the Q/DQ model (outputs {worst:.2g} apart)",
                       "use --layout split and report this model")
    return runner, {"file": dst.name, "split_file": qdq.name, "max_abs_deviation": worst,
                    "metadata": {k: metadata[k] for k in ("task", "stride", "imgsz", "batch")}}


def join_outputs(proto: Any, imgsz: tuple[int, int], nc: int, anchors: int) -> None:
    """Boxes (normalised, output 0) times (w, h, w, h), joined with the scores (output 1): one batch-1 output."""
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    boxes, scores = (o.name for o in graph.output)
    h, w = imgsz
    scale = numpy_helper.from_array(np.array([w, h, w, h], np.float32).reshape(1, 4, 1), "ultralytics_box_scale")
    graph.initializer.append(scale)
    graph.node.extend([
        helper.make_node("Mul", [boxes, scale.name], ["ultralytics_boxes"], name="ultralytics_boxes_to_pixels"),
        helper.make_node("Concat", ["ultralytics_boxes", scores], [OUTPUT_NAME], name="ultralytics_join", axis=1),
    ])
    # Batch 1, static, as 'yolo export' writes it: Ultralytics reads a symbolic batch as a dynamic
    # model and then feeds it rectangles of any size.
    out = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [1, 4 + nc, anchors])
    del graph.output[:]
    graph.output.append(out)
    batch = graph.input[0].type.tensor_type.shape.dim[0]
    batch.ClearField("dim_param")
    batch.dim_value = 1
