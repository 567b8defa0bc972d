"""Float parity: does the converted float model compute what the PyTorch model computes?

Quantization error and conversion error look alike in an accuracy number; this check separates
them. Before anyone trusts an int8 file we run the converter's *float* output on real inputs
and compare it with PyTorch: a float conversion must agree to float rounding. When it does not,
we look for the first layer where it stops agreeing, by running the ONNX graph with every
intermediate tensor exposed (ONNX Runtime) next to the .tflite with every tensor preserved, and
matching tensors by shape and value: converters rename everything, but values survive.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgh_deploy.errors import DGHError
from dgh_deploy.runtime.base import Runner

DEFAULT_RTOL = 1e-3  # of each output's scale (its largest magnitude): float32 conversions sit near 1e-6
_MATCH_RTOL = 1e-3  # for intermediates, relative to each tensor's own scale


@dataclass
class ParityResult:
    images: int
    max_abs_error: list[float]  # per output
    output_scale: list[float]  # per output: max |reference|
    tolerance: list[float]  # per output
    top1_agreement: float | None  # percent, classifiers only
    top1_disagreements: int  # images whose reference top-1 is clear (margin > 2 x tolerance) and differs
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        worst = int(np.argmax([e / t for e, t in zip(self.max_abs_error, self.tolerance, strict=True)]))
        text = (f"max error {self.max_abs_error[worst]:.4g} on output {worst} "
                f"(scale {self.output_scale[worst]:.4g}, tolerance {self.tolerance[worst]:.3g})")
        if self.top1_agreement is not None:
            text += f", top-1 agreement {self.top1_agreement:.1f}%"
        return text + f" on {self.images} images"


def compare_outputs(reference: list[np.ndarray], candidate: list[np.ndarray], rtol: float = DEFAULT_RTOL,
                    atol: float = 0.0, classify: bool = False) -> ParityResult:
    """Compare two runners' outputs; ``atol > 0`` replaces the scale-relative tolerance."""
    if len(reference) != len(candidate):
        raise DGHError(
            f"the converted model has {len(candidate)} outputs, PyTorch has {len(reference)}",
            "return plain tensors from forward() so that every output survives export",
        )
    errs, scales, tols = [], [], []
    for k, (r, c) in enumerate(zip(reference, candidate, strict=True)):
        if r.shape != c.shape:
            raise DGHError(
                f"output {k} of the converted model has shape {list(c.shape)}, PyTorch's {list(r.shape)}",
                "re-export the model with static shapes",
            )
        scale = float(np.abs(r).max()) or 1.0
        errs.append(float(np.abs(r.astype(np.float64) - c).max()))
        scales.append(scale)
        tols.append(atol if atol > 0 else rtol * scale)
    agreement, clear_disagree = None, 0
    if classify and reference[0].ndim == 2 and reference[0].shape[1] > 1:
        r, c = reference[0], candidate[0]
        agreement = 100.0 * float((r.argmax(1) == c.argmax(1)).mean())
        top2 = np.sort(r, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > 2 * tols[0]
        clear_disagree = int((clear & (r.argmax(1) != c.argmax(1))).sum())
    passed = all(e <= t for e, t in zip(errs, tols, strict=True)) and clear_disagree == 0
    return ParityResult(len(reference[0]), errs, scales, tols, agreement, clear_disagree, passed)


def check_float_parity(
    candidate: Runner,
    reference: Runner,
    images: np.ndarray,
    *,
    classify: bool = False,
    rtol: float = DEFAULT_RTOL,
    atol: float = 0.0,
    onnx_path: str | Path | None = None,
    tflite_path: str | Path | None = None,
    what: str = "float conversion",
) -> ParityResult:
    """Raise :class:`DGHError` (naming the first diverging layer when found) unless they agree."""
    result = compare_outputs(reference.infer_all(images), candidate.infer_all(images), rtol, atol, classify)
    if result.passed:
        return result
    where = ""
    if onnx_path is not None and tflite_path is not None:
        try:
            div = first_divergence(onnx_path, tflite_path, images[:1])
        except Exception:  # the diagnosis is best effort; the verdict stands without it
            div = None
        if div is not None:
            where = f"; first diverging layer: {div.describe()}"
    raise DGHError(
        f"{what} disagrees with PyTorch: {result.describe()}{where}",
        "rewrite that layer into an equivalent converter-friendly form (a model export_form), "
        "or report the op to the converter",
    )


# --- where does it diverge? ----------------------------------------------------------------------


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


def _layouts(a: np.ndarray) -> list[np.ndarray]:
    """An ONNX (channel-first) tensor as onnx2tf may hold it: as is, or with channels moved last."""
    out = [a]
    if a.ndim >= 3:
        out.append(np.moveaxis(a, 1, -1))
    return out


def _close(a: np.ndarray, b: np.ndarray) -> tuple[bool, float, float]:
    scale = float(np.abs(a).max())
    err = float(np.abs(a.astype(np.float64) - b).max())
    return err <= _MATCH_RTOL * max(scale, 1e-6) + 1e-6, err, scale


def first_divergence(onnx_path: str | Path, tflite_path: str | Path, x: np.ndarray) -> Divergence | None:
    """The first TFLite op whose output matches no ONNX tensor while its inputs all did."""
    from dgh_deploy.runtime.litert_runner import open_interpreter

    onnx_vals, graph = onnx_intermediates(onnx_path, x)
    producer = {out: (n.name or out, n.op_type) for n in graph.node for out in n.output}
    consumers: dict[str, list[str]] = {}
    for n in graph.node:
        for inp in n.input:
            consumers.setdefault(inp, []).append(n.name or n.output[0])
    node_type = {(n.name or n.output[0]): n.op_type for n in graph.node}
    node_out = {(n.name or n.output[0]): n.output[0] for n in graph.node}
    input_name = graph.input[0].name
    onnx_vals.setdefault(input_name, np.ascontiguousarray(x, np.float32))

    it = open_interpreter(tflite_path, preserve_all=True, delegates=False)
    inp = it.get_input_details()[0]
    feed = x.transpose(0, 2, 3, 1) if tuple(inp["shape"][1:]) == (x.shape[2], x.shape[3], x.shape[1]) else x
    it.set_tensor(inp["index"], np.ascontiguousarray(feed, dtype=inp["dtype"]))
    it.invoke()
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    produced = {int(i) for op in it._get_ops_details() for i in op["outputs"]}

    by_shape: dict[tuple[int, ...], list[tuple[str, np.ndarray]]] = {}
    for name, a in onnx_vals.items():
        for view in _layouts(a):
            by_shape.setdefault(tuple(view.shape), []).append((name, view))

    status: dict[int, str] = {int(inp["index"]): "good"}
    matched_name: dict[int, str] = {int(inp["index"]): input_name}
    for op in it._get_ops_details():
        ins = [int(i) for i in op["inputs"] if i >= 0 and int(i) in produced | {int(inp["index"])}]
        for idx in (int(i) for i in op["outputs"]):
            t = it.get_tensor(idx)
            if t.dtype.kind != "f":
                status[idx] = "unknown"
                continue
            cands = by_shape.get(tuple(t.shape), [])
            best: tuple[float, str, float] | None = None
            for name, view in cands:
                ok, err, scale = _close(view, t)
                if ok:
                    status[idx], matched_name[idx] = "good", name
                    break
                if best is None or err / max(scale, 1e-12) < best[0] / max(best[2], 1e-12):
                    best = (err, name, scale)
            else:
                status[idx] = "bad" if cands else "unknown"
            if status[idx] != "bad" or any(status.get(i) == "bad" for i in ins):
                continue
            # The counterpart: an ONNX node fed by the tensors this op's inputs matched.
            fed_by = [matched_name[i] for i in ins if i in matched_name]
            counterpart = next((c for name in fed_by for c in consumers.get(name, [])), None)
            if counterpart is None and best is not None:
                counterpart = producer.get(best[1], (None, None))[0]
            err = scale = None
            if counterpart is not None and counterpart in node_out and node_out[counterpart] in onnx_vals:
                for view in _layouts(onnx_vals[node_out[counterpart]]):
                    if view.shape == t.shape:
                        _, err, scale = _close(view, t)
                        break
            if err is None and best is not None:
                err, scale = best[0], best[2]
            return Divergence(str(op["op_name"]), int(op["index"]), str(tensors[idx]["name"]), counterpart,
                              node_type.get(counterpart) if counterpart else None, err, scale)
    return None
