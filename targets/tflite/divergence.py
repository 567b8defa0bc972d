"""Where does a float .tflite stop agreeing with its ONNX source? The first diverging layer, by value.

We run the ONNX graph with every intermediate tensor exposed (ONNX Runtime) next to the .tflite
with every tensor preserved, and match tensors by shape and value: converters rename everything,
but values survive (onnx2tf may move channels last, so both layouts are tried). The first TFLite
op whose output matches no ONNX tensor while its inputs all did is where conversion went wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MATCH_RTOL = 1e-3  # for intermediates, relative to each tensor's own scale


@dataclass
class Divergence:
    tflite_op: str
    tflite_index: int
    tflite_tensor: str
    onnx_node: str | None  # the ONNX node that should have produced the same tensor
    onnx_op: str | None
    error: float | None  # max |difference| against that node's output, if shapes allow
    scale: float | None

    def describe(self) -> str:
        text = f"TFLite {self.tflite_op} #{self.tflite_index} ('{self.tflite_tensor[:80]}')"
        if self.onnx_node:
            text += f", from ONNX {self.onnx_op} '{self.onnx_node}'"
        if self.error is not None and self.scale:
            text += f" (max error {self.error:.3g} at scale {self.scale:.3g})"
        return text


def onnx_intermediates(onnx_path: str | Path, x: np.ndarray) -> tuple[dict[str, np.ndarray], Any]:
    """Every float tensor the ONNX graph computes for ``x`` (NCHW), by name; and the graph."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    present = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for out in node.output:
            if out and out not in present:
                model.graph.output.append(onnx.ValueInfoProto(name=out))
                present.add(out)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(names, {sess.get_inputs()[0].name: np.ascontiguousarray(x, np.float32)})
    tensors = {n: v for n, v in zip(names, values, strict=True)
               if isinstance(v, np.ndarray) and v.dtype.kind == "f" and v.ndim >= 1}
    return tensors, model.graph


def layouts(a: np.ndarray) -> list[np.ndarray]:
    """An ONNX (channel-first) tensor as onnx2tf may hold it: as is, or with channels moved last."""
    out = [a]
    if a.ndim >= 3:
        out.append(np.moveaxis(a, 1, -1))
    return out


def close(a: np.ndarray, b: np.ndarray) -> tuple[bool, float, float]:
    """(within tolerance, max |a - b|, a's scale)."""
    scale = float(np.abs(a).max())
    err = float(np.abs(a.astype(np.float64) - b).max())
    return err <= MATCH_RTOL * max(scale, 1e-6) + 1e-6, err, scale


@dataclass
class OnnxSide:
    """The ONNX graph's values for one input, indexed for matching."""

    values: dict[str, np.ndarray]
    graph: Any
    by_shape: dict[tuple[int, ...], list[tuple[str, np.ndarray]]]

    @classmethod
    def run(cls, onnx_path: str | Path, x: np.ndarray) -> OnnxSide:
        values, graph = onnx_intermediates(onnx_path, x)
        values.setdefault(graph.input[0].name, np.ascontiguousarray(x, np.float32))
        by_shape: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
        for name, a in values.items():
            for view in layouts(a):
                by_shape.setdefault(tuple(view.shape), []).append((name, view))
        return cls(values, graph, by_shape)

    def node_key(self, node: Any) -> str:
        return node.name or node.output[0]

    def consumers_of(self, tensor: str) -> list[str]:
        return [self.node_key(n) for n in self.graph.node if tensor in n.input]

    def producer_of(self, tensor: str) -> str | None:
        return next((n.name or tensor for n in self.graph.node if tensor in n.output), None)

    def node(self, key: str) -> Any:
        return next((n for n in self.graph.node if self.node_key(n) == key), None)

    def match(self, t: np.ndarray) -> tuple[str | None, tuple[float, str, float] | None, bool]:
        """(matched ONNX tensor or None, the closest miss as (error, name, scale), any candidate at all)."""
        cands = self.by_shape.get(tuple(t.shape), [])
        best: tuple[float, str, float] | None = None
        for name, view in cands:
            ok, err, scale = close(view, t)
            if ok:
                return name, None, True
            if best is None or err / max(scale, 1e-12) < best[0] / max(best[2], 1e-12):
                best = (err, name, scale)
        return None, best, bool(cands)


def first_divergence(onnx_path: str | Path, tflite_path: str | Path, x: np.ndarray) -> Divergence | None:
    """The first TFLite op whose output matches no ONNX tensor while its inputs all did."""
    from dgh_deploy.runtime.litert_runner import open_interpreter

    onnx_side = OnnxSide.run(onnx_path, x)
    it = open_interpreter(tflite_path, preserve_all=True, delegates=False)
    inp = it.get_input_details()[0]
    feed = x.transpose(0, 2, 3, 1) if tuple(inp["shape"][1:]) == (x.shape[2], x.shape[3], x.shape[1]) else x
    it.set_tensor(inp["index"], np.ascontiguousarray(feed, dtype=inp["dtype"]))
    it.invoke()
    ops = it._get_ops_details()  # the public API has no op list; this is what LiteRT's tools read
    produced = {int(i) for op in ops for i in op["outputs"]} | {int(inp["index"])}
    names = {int(t["index"]): str(t["name"]) for t in it.get_tensor_details()}
    status: dict[int, str] = {int(inp["index"]): "good"}
    matched: dict[int, str] = {int(inp["index"]): onnx_side.graph.input[0].name}
    for op in ops:
        ins = [int(i) for i in op["inputs"] if i >= 0 and int(i) in produced]
        for idx in (int(i) for i in op["outputs"]):
            t = it.get_tensor(idx)
            if t.dtype.kind != "f":
                status[idx] = "unknown"
                continue
            name, best, any_cand = onnx_side.match(t)
            if name is not None:
                status[idx], matched[idx] = "good", name
                continue
            status[idx] = "bad" if any_cand else "unknown"
            if status[idx] == "bad" and not any(status.get(i) == "bad" for i in ins):
                return _describe(onnx_side, op, names[idx], t, [matched[i] for i in ins if i in matched], best)
    return None


def _describe(onnx_side: OnnxSide, op: dict[str, Any], tensor_name: str, t: np.ndarray, fed_by: list[str],
              best: tuple[float, str, float] | None) -> Divergence:
    """The diverging op and its ONNX counterpart: a node fed by the tensors this op's inputs matched."""
    counterpart = next((c for name in fed_by for c in onnx_side.consumers_of(name)), None)
    if counterpart is None and best is not None:
        counterpart = onnx_side.producer_of(best[1])
    err = scale = None
    node = onnx_side.node(counterpart) if counterpart is not None else None
    if node is not None and node.output[0] in onnx_side.values:
        for view in layouts(onnx_side.values[node.output[0]]):
            if view.shape == t.shape:
                _, err, scale = close(view, t)
                break
    if err is None and best is not None:
        err, scale = best[0], best[2]
    return Divergence(str(op["op_name"]), int(op["index"]), tensor_name, counterpart,
                      node.op_type if node is not None else None, err, scale)
