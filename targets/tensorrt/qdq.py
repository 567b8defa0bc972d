"""Explicit INT8 for TensorRT 10/11: insert QuantizeLinear/DequantizeLinear into a float ONNX model.

TensorRT's rules (NVIDIA's explicit-quantization guide, ModelOpt's TensorRT-guided settings):
symmetric int8 with zero point 0; weights per output channel (Conv axis 0, ConvTranspose
axis 1, Gemm/MatMul the output-feature axis of B), activations per tensor; Q/DQ only on the
*inputs* of the layers that compute in int8, so TensorRT fuses ``DQ -> Conv(+folded BN) ->
Relu`` into one int8 conv and the residual ``Add`` (both inputs quantized) into that conv
too. Nothing is inserted between a Conv and its Relu, and outputs stay float.

Quantized: every Conv, ConvTranspose, Gemm and MatMul (data and weight inputs), and every Add
whose two inputs are both activations and whose result flows on into a quantized layer (residual
joins). Bias adds onto constants stay float.

Left in float, as TensorRT runs a detector's post-processing (Ultralytics keeps the head's
Sigmoid out of int8 for the same reason):

* an Add whose result reaches no quantized layer: box arithmetic after the head (YOLOv8's
  ``lt + rb``), where int8 would only coarsen the coordinates and saves nothing;
* a Conv fed by a Softmax (YOLOv8's DFL expectation: a fixed 0..15 ramp over a probability
  vector): int8 would erase the small probabilities that place a box edge, on a layer with 16
  multiply-adds per anchor.

Concat, MaxPool, Resize and the activations get no Q/DQ of their own. Where a Concat feeds a
Conv, the Conv's input Q/DQ sits on the Concat's *output*; TensorRT moves that one Q backward
through the Concat (and through MaxPool/Resize, which commute with it) onto every input, so all
inputs share one scale by construction. Separate Q/DQ pairs with different scales on the inputs
would make TensorRT requantize at the join (ModelOpt leaves Concat unquantized for this reason).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dgh_deploy.errors import DGHError
from dgh_deploy.targets.tensorrt.cache import amax_to_scale

QUANTIZED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops that only move or select values: a Softmax seen through them still feeds the next layer.
_LAYOUT_OPS = ("Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity")
MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (the axis attribute)
_FLOAT = 1  # onnx.TensorProto.FLOAT


@dataclass(frozen=True)
class WeightSlot:
    node: int  # index of the consuming node
    input: int  # which input of it
    name: str  # the constant tensor
    axis: int | None  # per-channel axis, None for per-tensor


@dataclass
class QdqPlan:
    """Where Q/DQ goes in a float graph: activation tensors (per tensor) and weight slots."""

    activations: list[str] = field(default_factory=list)
    weights: list[WeightSlot] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)  # names of the quantized compute nodes
    act_slots: list[tuple[int, int]] = field(default_factory=list)  # (node, input) reading a DQ'd activation
    float_layers: dict[str, str] = field(default_factory=dict)  # compute nodes left in float -> why

    def add_activation(self, node: int, slot: int, name: str) -> None:
        self.act_slots.append((node, slot))
        if name not in self.activations:
            self.activations.append(name)


@dataclass
class GraphFacts:
    constants: dict[str, np.ndarray]  # initializers and Constant-node outputs
    float_tensors: set[str]
    shapes: dict[str, list[int | None]]
    inputs: list[str]


def constants_to_initializers(model: Any) -> Any:
    """A copy of ``model`` with Constant nodes turned into initializers (same tensor names)."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = []
    for node in out.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and len(node.attribute) == 1:
            arr = numpy_helper.to_array(value.t)
            out.graph.initializer.append(numpy_helper.from_array(arr, node.output[0]))
        else:
            keep.append(node)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return out


def graph_facts(model: Any) -> GraphFacts:
    import onnx
    from onnx import numpy_helper

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    constants = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for node in g.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None:
            constants[node.output[0]] = numpy_helper.to_array(value.t)
    float_tensors: set[str] = set()
    shapes: dict[str, list[int | None]] = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        if tt.elem_type == _FLOAT:
            float_tensors.add(vi.name)
        if tt.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
    inputs = [i.name for i in g.input if i.name not in constants]
    return GraphFacts(constants, float_tensors - set(constants), shapes, inputs)


def calibration_tensors(model: Any) -> list[str]:
    """Every float activation TensorRT may hold in int8: the graph input and all float node outputs.

    These get ranges in the calibration cache (a superset of the Q/DQ tensors, as TensorRT's
    own calibrator writes one line per tensor), in graph order.
    """
    facts = graph_facts(model)
    names = [n for n in facts.inputs if n in facts.float_tensors]
    seen = set(names)
    for node in model.graph.node:
        for out in node.output:
            if node.op_type != "Constant" and out in facts.float_tensors and out not in seen:
                seen.add(out)
                names.append(out)
    return names


@dataclass
class GraphIndex:
    """Who produces and who consumes each tensor of a graph, by node position."""

    nodes: list[Any]
    producer: dict[str, Any]
    consumers: dict[str, list[int]]

    @classmethod
    def of(cls, model: Any) -> GraphIndex:
        nodes = list(model.graph.node)
        consumers: dict[str, list[int]] = {}
        for i, node in enumerate(nodes):
            for name in node.input:
                consumers.setdefault(name, []).append(i)
        return cls(nodes, {out: n for n in nodes for out in n.output}, consumers)

    def fed_by_softmax(self, name: str) -> bool:
        """Whether ``name`` is a Softmax's output, seen through layout-only ops."""
        node = self.producer.get(name)
        while node is not None and node.op_type in _LAYOUT_OPS:
            node = self.producer.get(node.input[0])
        return node is not None and node.op_type == "Softmax"

    def reaches(self, start: int, targets: set[int]) -> bool:
        """Whether node ``start``'s result flows, through any path, into one of ``targets``."""
        todo, visited = [start], {start}
        while todo:
            for out in self.nodes[todo.pop()].output:
                for j in self.consumers.get(out, []):
                    if j in targets:
                        return True
                    if j not in visited:
                        visited.add(j)
                        todo.append(j)
        return False


def _node_name(node: Any, i: int) -> str:
    return node.name or f"{node.op_type}_{i}"


def plan_qdq(model: Any, per_channel: bool = True, float_modules: tuple[str, ...] = ()) -> QdqPlan:
    facts = graph_facts(model)
    index = GraphIndex.of(model)
    plan = QdqPlan()
    compute = _compute_layers(index, plan, float_modules)
    if not compute:
        raise DGHError(
            "the model has no Conv, Gemm or MatMul layer to quantize for TensorRT INT8",
            "use a CNN or linear model, or another target",
        )
    for i, node in enumerate(index.nodes):
        if i in compute:
            _plan_compute_layer(plan, facts, i, node, per_channel)
        elif node.op_type == "Add" and len(node.input) == 2 and not in_modules(node.name, float_modules):
            _plan_residual_add(plan, facts, index, compute, i, node)
    return plan


def _compute_layers(index: GraphIndex, plan: QdqPlan, float_modules: tuple[str, ...] = ()) -> set[int]:
    """Positions of the layers that compute in int8; the ones kept in float go to ``plan.float_layers``."""
    compute = set()
    for i, node in enumerate(index.nodes):
        if node.op_type not in QUANTIZED_OPS:
            continue
        if in_modules(node.name, float_modules):
            plan.float_layers[_node_name(node, i)] = "kept in float (--float-layers)"
        elif node.input and index.fed_by_softmax(node.input[0]):
            plan.float_layers[_node_name(node, i)] = "fed by a Softmax (e.g. DFL box decoding)"
        else:
            compute.add(i)
    return compute


def in_modules(node_name: str, modules: tuple[str, ...]) -> bool:
    """Whether a torch.onnx node belongs to one of the PyTorch ``modules`` (or their submodules)."""
    from dgh_deploy.targets.tensorrt.layer_errors import onnx_layer

    path = onnx_layer(node_name)
    return any(path == m or path.startswith(m + ".") for m in modules)


def _plan_compute_layer(plan: QdqPlan, facts: GraphFacts, i: int, node: Any, per_channel: bool) -> None:
    """Q/DQ on a compute layer's data input (per tensor) and weight (per channel where it can)."""
    for slot, name in enumerate(list(node.input)[:2]):
        if not name:
            continue
        if name in facts.constants:
            axis = _weight_axis(node, slot, facts.constants[name]) if per_channel else None
            plan.weights.append(WeightSlot(i, slot, name, axis))
        elif name in facts.float_tensors:
            plan.add_activation(i, slot, name)
    plan.layers.append(_node_name(node, i))


def _plan_residual_add(plan: QdqPlan, facts: GraphFacts, index: GraphIndex, compute: set[int], i: int,
                       node: Any) -> None:
    """Both inputs of a residual join quantized, so TensorRT fuses it into the conv before it."""
    ins = list(node.input)
    if not all(n in facts.float_tensors and n not in facts.constants for n in ins):
        return
    if not index.reaches(i, compute):
        plan.float_layers[node.name or f"Add_{i}"] = "feeds no quantized layer (post-processing)"
        return
    for slot, name in enumerate(ins):
        plan.add_activation(i, slot, name)
    plan.layers.append(node.name or f"Add_{i}")


def _weight_axis(node: Any, slot: int, value: np.ndarray) -> int | None:
    """The output-channel axis of a constant weight, or None where per-tensor is the only choice."""
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "Conv" and slot == 1:
        return 0
    if node.op_type == "ConvTranspose" and slot == 1:
        group = attrs["group"].i if "group" in attrs else 1
        return 1 if group == 1 else None  # grouped: axis 1 holds Cout / group, not all outputs
    if node.op_type == "Gemm" and slot == 1 and value.ndim == 2:
        trans_b = attrs["transB"].i if "transB" in attrs else 0
        return 0 if trans_b else 1
    if node.op_type == "MatMul" and slot == 1 and value.ndim >= 2:
        return value.ndim - 1
    return None


def weight_amax(w: np.ndarray, axis: int | None) -> np.ndarray:
    """max |w| over the whole tensor (``axis`` None) or per slice along ``axis``."""
    a = np.abs(np.asarray(w, dtype=np.float64))
    if axis is None:
        return np.asarray(a.max() if a.size else 0.0)
    other = tuple(d for d in range(a.ndim) if d != axis)
    return a.max(axis=other) if other else a


def insert_qdq(model: Any, act_amax: dict[str, float], per_channel: bool = True,
               float_modules: tuple[str, ...] = ()) -> tuple[Any, QdqPlan]:
    """The float ``model`` with Q/DQ pairs on every quantized input; scales are ``amax / 127``. The layers
    of ``float_modules`` (PyTorch module paths) get none: TensorRT runs them in float."""
    import onnx
    from onnx import numpy_helper

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < MIN_OPSET:
        raise DGHError(f"the ONNX model uses opset {opset}", f"export with opset {MIN_OPSET} or newer")
    model = constants_to_initializers(model)
    plan = plan_qdq(model, per_channel, float_modules)
    missing = [t for t in plan.activations if t not in act_amax]
    if missing:
        raise DGHError(f"no calibrated range for tensor '{missing[0]}'", "calibrate every tensor the plan quantizes")
    g = model.graph
    pairs = QdqPairs(g)
    act_nodes: dict[str, list[Any]] = {}
    act_dq: dict[str, str] = {}
    for t in plan.activations:
        act_nodes[t], act_dq[t] = pairs.make(t, np.asarray(act_amax[t]), None)
    head: list[Any] = []
    weight_dq: dict[tuple[str, int | None], str] = {}
    inits = {t.name: t for t in g.initializer}
    for slot in plan.weights:
        key = (slot.name, slot.axis)
        if key not in weight_dq:
            w = numpy_helper.to_array(inits[slot.name])
            nodes, weight_dq[key] = pairs.make(slot.name, weight_amax(w, slot.axis), slot.axis)
            head += nodes

    nodes = list(g.node)
    for node_idx, slot_idx in plan.act_slots:
        nodes[node_idx].input[slot_idx] = act_dq[nodes[node_idx].input[slot_idx]]
    for slot in plan.weights:
        nodes[slot.node].input[slot.input] = weight_dq[(slot.name, slot.axis)]
    _reorder(g, head, nodes, act_nodes, plan.activations)
    onnx.checker.check_model(model)
    return model, plan


class QdqPairs:
    """Makes QuantizeLinear/DequantizeLinear pairs in a graph, with names no other tensor has."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.taken = {*(t.name for t in graph.initializer), *(o for n in graph.node for o in n.output),
                      *(i.name for i in graph.input)}

    def fresh(self, name: str) -> str:
        out, k = name, 1
        while out in self.taken:
            out, k = f"{name}_{k}", k + 1
        self.taken.add(out)
        return out

    def make(self, src: str, amax: np.ndarray, axis: int | None) -> tuple[list[Any], str]:
        """The two nodes quantizing ``src`` at ``amax / 127`` (per ``axis`` if given), and the DQ output."""
        from onnx import helper, numpy_helper

        scale = amax_to_scale(amax)
        s_name, z_name = self.fresh(f"{src}_scale"), self.fresh(f"{src}_zero_point")
        self.graph.initializer.append(numpy_helper.from_array(scale, s_name))
        self.graph.initializer.append(numpy_helper.from_array(np.zeros(scale.shape, np.int8), z_name))
        q_out, dq_out = self.fresh(f"{src}_quantized"), self.fresh(f"{src}_dequantized")
        kw = {"axis": axis} if axis is not None else {}
        nodes = [
            helper.make_node("QuantizeLinear", [src, s_name, z_name], [q_out],
                             name=self.fresh(f"{src}_QuantizeLinear"), **kw),
            helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out],
                             name=self.fresh(f"{src}_DequantizeLinear"), **kw),
        ]
        return nodes, dq_out


def _reorder(g: Any, head: list[Any], nodes: list[Any], act_nodes: dict[str, list[Any]],
             activations: list[str]) -> None:
    """Weight pairs first, each activation's pair right after its producer (graph inputs: first)."""
    graph_inputs = {i.name for i in g.input}
    ordered = head + [n for t in activations if t in graph_inputs for n in act_nodes[t]]
    for node in nodes:
        ordered.append(node)
        for out in node.output:
            if out in act_nodes:
                ordered += act_nodes[out]
    del g.node[:]
    g.node.extend(ordered)


def activation_bytes_per_image(model: Any, tensors: list[str]) -> int:
    """Float32 bytes of ``tensors`` for one image (batch dim and unknown dims count as 1)."""
    shapes = graph_facts(model).shapes
    total = 0
    for t in tensors:
        dims = shapes.get(t) or []
        total += 4 * int(np.prod([d or 1 for d in dims[1:]], dtype=np.int64)) if dims else 4 * 1024 * 1024
    return total
