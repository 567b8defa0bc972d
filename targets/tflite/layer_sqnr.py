"""Where does int8 lose accuracy? Per-tensor SQNR of a full-integer .tflite against its float twin.

onnx2tf writes ``*_float32.tflite`` and ``*_full_integer_quant.tflite`` from one TensorFlow graph,
so their tensors carry the same names (fused ops keep the ';'-joined names of what they fused).
Running both on the same image with every tensor preserved, and dequantizing each int8 tensor
with its own scale and zero point, gives the quantization noise of every layer in execution
order: the layers where the SQNR falls are the ones to fix (a range too wide, a fixed-scale op).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from dgh_deploy.verification.layers import LayerError, sqnr_db

Op = tuple[int, str, dict[str, Any], list[int]]  # index, type, output tensor, input tensor indices


def _run_all(path: str | Path, x: np.ndarray) -> tuple[dict[str, np.ndarray], list[Op]]:
    """Every op output of ``path`` for ``x`` (N x 3 x H x W float32, one image at a time), dequantized."""
    from dgh_deploy.runtime.litert_runner import open_interpreter, tensor_io

    it = open_interpreter(path, preserve_all=True, delegates=False)
    inp = tensor_io(it.get_input_details()[0])
    details = {t["index"]: t for t in it.get_tensor_details()}
    ops = it._get_ops_details()  # the public API has no op list
    values: dict[str, list[np.ndarray]] = {}
    for image in x:
        feed = image.transpose(1, 2, 0)[None] if inp.shape[-1] == image.shape[0] else image[None]
        if inp.quantized:
            info = np.iinfo(inp.dtype)
            feed = np.clip(np.rint(feed / inp.scale) + inp.zero_point, info.min, info.max)
        it.set_tensor(inp.index, np.ascontiguousarray(feed, dtype=inp.dtype))
        it.invoke()
        for op in ops:
            for idx in op["outputs"]:
                t = details[int(idx)]
                v = it.get_tensor(int(idx))
                q = t["quantization_parameters"]
                if v.dtype.kind in "iu" and len(q["scales"]) == 1:
                    v = (v.astype(np.float32) - q["zero_points"][0]) * q["scales"][0]
                elif v.dtype.kind != "f":
                    continue
                values.setdefault(t["name"], []).append(np.asarray(v, np.float32))
    order = [(int(op["index"]), str(op["op_name"]), details[int(i)], [int(j) for j in op["inputs"] if j >= 0])
             for op in ops for i in op["outputs"]]
    return {k: np.concatenate(v) for k, v in values.items()}, order


def layer_sqnr(float_path: str | Path, int8_path: str | Path, images: np.ndarray) -> list[LayerError]:
    """Per-tensor SQNR of ``int8_path`` against ``float_path`` on ``images`` (model input space, NCHW).

    Uses the reference kernels (every tensor visible): a few seconds per image for a YOLO at 320.
    """
    ref, _ = _run_all(float_path, images)
    got, order = _run_all(int8_path, images)
    rows = []
    known: dict[int, float] = {}  # tensor index -> SQNR, for the noise each op adds to its inputs'
    for index, op, t, inputs in order:
        name = t["name"]
        into = [known[i] for i in inputs if i in known]
        if name not in ref or name not in got or ref[name].shape != got[name].shape:
            if op in ("QUANTIZE", "DEQUANTIZE") and into:  # a requantization between int8 and int16 ops
                known[t["index"]] = into[0]
            continue
        x = ref[name]
        db = known[t["index"]] = sqnr_db(x, got[name])
        qp = t["quantization_parameters"]
        scale = float(qp["scales"][0]) if len(qp["scales"]) == 1 else 0.0
        zp = int(qp["zero_points"][0]) if len(qp["zero_points"]) == 1 else 0
        rows.append(LayerError(index, op, name, module_path(name), db, float(x.min()), float(x.max()), scale, zp,
                               min(into) if into else None))
    return rows


def module_path(tensor: str) -> str:
    """The PyTorch module path in a litert-torch tensor name, else the name itself.

    litert-torch names a tensor by the module stack that produced it (``pkg.Class_attr/...``, fused ops
    ';'-joined, the op's own last): ``.../C3_2/ultralytics...Conv_cv2/...Conv2d_conv;2`` -> ``2.cv2.conv``.
    Other converters' names (TensorFlow's ``model/tf.math.add_3/Add``) are kept as they are.
    """
    own = tensor.split(";;")[-1].split(";")[0]
    elements = own.split("/")
    if not all("." in e for e in elements):
        return tensor
    parts = []
    for element in elements:
        _cls, _, attr = element.rsplit(".", 1)[-1].partition("_")
        if attr and attr != "wrapped":  # litert-torch's I/O wrapper holds the model as "wrapped"
            parts.append(attr)
    return ".".join(parts) or "(model)"


def layer_regex(path: str) -> str:
    """A regex that finds the ops of module ``path`` (``2.cv2``; and its submodules) in litert-torch's
    tensor names (and ai-edge-quantizer's op scopes, the same names with a ';' after): the inverse of
    :func:`module_path`, matched on the op's own (last) name only, so a fused op that merely mentions
    another module is not taken."""
    steps = "".join(rf"/[^/;]*_{re.escape(attr)}" for attr in path.split("."))
    return rf"(?:^|;;)[^;]*_wrapped{steps}(?:/[^;]*)?(?:;\d*)*$"  # ai-edge-quantizer appends a ';'


def layers_in(path: str | Path, layers: tuple[str, ...]) -> dict[str, int]:
    """How many ops of the .tflite file at ``path`` each of ``layers`` (module paths) names."""
    from dgh_deploy.runtime.litert_runner import open_interpreter

    it = open_interpreter(path, delegates=False)
    details = {t["index"]: t["name"] for t in it.get_tensor_details()}
    names = [details[int(i)] for op in it._get_ops_details() for i in op["outputs"][:1]]
    return {layer: sum(bool(re.search(layer_regex(layer), n)) for n in names) for layer in layers}


def scope_path(path: str, float_path: str | Path) -> str:
    """The name litert-torch gives module ``path`` (a PyTorch module path) in ``float_path``'s tensors.

    litert-torch names a tensor by the modules that were *called*: a container the model indexes
    instead of calling (``self.model[i](x)``, a ModuleList) is not in the name, so YOLOv5's
    ``model.1.conv`` is ``1.conv`` there. The longest tail of ``path`` that names ops is the one."""
    parts = path.split(".")
    tails = [".".join(parts[i:]) for i in range(len(parts))]
    counts = layers_in(float_path, tuple(tails))
    return next((tail for tail in tails if counts[tail]), path)


def full_path(path: str, names: list[str]) -> str:
    """A litert-torch module path (``1.conv``) as the PyTorch model names it (``model.1.conv``): the module
    with the fewest segments before it (only uncalled containers are dropped, and they lead), where one
    is fewest; else as it is."""
    if path in names:
        return path
    matches = sorted((n.count("."), n) for n in names if n.endswith("." + path))
    if not matches or (len(matches) > 1 and matches[0][0] == matches[1][0]):
        return path
    return matches[0][1]
