"""Per-layer SQNR of the Q/DQ ONNX model: every node output it shares with the float ONNX model.

The Q/DQ graph keeps the float graph's tensor names: a conv's output is still computed in float,
from dequantized int8 inputs and weights, so it carries every quantization step before it.
ONNX Runtime runs both graphs with those tensors added as outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dgh_deploy.verification.layers import LayerError, sqnr_db


def qdq_layer_errors(float_path: Path, qdq_path: Path, images: np.ndarray, threads: int) -> list[LayerError]:
    import onnx

    float_proto, qdq_proto = onnx.load(str(float_path)), onnx.load(str(qdq_path))
    qdq_outputs = {o for node in qdq_proto.graph.node for o in node.output}
    nodes = [(n, o) for n in float_proto.graph.node if n.op_type != "Constant" for o in n.output if o in qdq_outputs]
    names = [o for _, o in nodes]
    ref, got = _run(float_proto, names, images, threads), _run(qdq_proto, names, images, threads)
    rows = []
    known: dict[str, float] = {}  # tensor -> SQNR, for the noise each node adds to its inputs'
    for index, (node, name) in enumerate(nodes):
        x, q = ref[name], got[name]
        if x.shape != q.shape or x.dtype.kind != "f" or not x.size:
            continue
        into = [known[i] for i in node.input if i in known]
        db = known[name] = sqnr_db(x, q)
        rows.append(LayerError(index, node.op_type, name, onnx_layer(node.name), db, float(x.min()), float(x.max()),
                               input_sqnr_db=min(into) if into else None))
    return rows


def onnx_layer(node_name: str) -> str:
    """The PyTorch module of a torch.onnx node name: its scopes, less the op's own name.

    A scope is a module's name, or its full path when nested (``/layer1/layer1.0/conv1/Conv`` ->
    ``layer1.0.conv1``); a node of the top-level module (``/Relu``) is ``(model)``.
    """
    path = ""
    scopes = [p for p in node_name.split("/") if p][:-1]
    for scope in scopes:
        path = scope if not path or scope.startswith(path + ".") else f"{path}.{scope}"
    return path or ("(model)" if node_name.startswith("/") else node_name)


def _run(proto: Any, names: list[str], images: np.ndarray, threads: int) -> dict[str, np.ndarray]:
    """The tensors ``names`` of ``proto`` on ``images`` (one at a time), concatenated."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in have)
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)
    so.log_severity_level = 3
    # Optimisations would fuse nodes away (and with them the tensors asked for).
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for image in images:
        values = session.run(names, {feed: np.ascontiguousarray(image[None], dtype=np.float32)})
        for n, v in zip(names, values, strict=True):
            chunks[n].append(np.asarray(v))
    return {n: np.concatenate(v) if v[0].ndim else np.stack(v) for n, v in chunks.items()}
