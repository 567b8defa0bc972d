"""Empirical bias correction of a full-integer .tflite, measured on LiteRT against its float twin.

Rounding and clipping an activation to int8 is not error-free on average: a range clipped below
its extremes, rounding passed through a SiLU's curve, the int8 LOGISTIC topping out at 255/256
each move the mean of what the next conv computes, and the moves add up layer after layer. A conv's
int32 bias can take such a move back, channel by channel: run the float file and the int8 file on
the calibration images, and give each conv's bias the difference of its output's per-channel means
(Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction", ICCV 2019,
the empirical variant). Measured on the int8 file itself, so the correction holds LiteRT's own
kernels, not a simulation of them.

A conv's move depends on every conv before it, so each conv is measured with every conv upstream of
it already corrected. Measuring a conv together with one upstream of it takes the upstream move
back twice, once where it starts and once where it arrives: on YOLOv5n at 640, eight groups of
convs in execution order left the int8 means 2.2 output steps off the float ones, against 0.15
before, and the file lost 5 mAP50-95. LiteRT runs a whole graph per invoke, so the convs go by
*level*, the number of corrected convs on the longest path before them: no conv is upstream of
another of its level, so one pass of the int8 file per level is exact. The float outputs do not
move, so the float file runs once per image and its conv outputs are kept (up to
:data:`MEMORY_BYTES`, which bounds how many images take part).

The bias moves a conv's output only where it is inside its clamp (a fused ReLU or ReLU6, and the
int8 ends, which an mse range puts inside the values on purpose). So the error is averaged over
the positions where the int8 output is inside its clamp, paired position by position with the
float output; a channel almost always clamped keeps its bias.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgh_deploy.progress import progress_bar
from dgh_deploy.targets.tflite.flatbuffer import graph_prefix, tflite_schema

CORRECTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
MIN_ACTIVE = 0.05  # a channel inside its clamp less often than this keeps its bias
MAX_IMAGES = 32  # a per-channel mean over 32 images' positions moves by far less than an output step
MEMORY_BYTES = 1 << 30  # the float conv outputs kept at once (YOLOv5n at 640: 56 MB an image, so 19 images)
_ACTIVATION_BOUNDS = {0: (-np.inf, np.inf), 1: (0.0, np.inf), 2: (-1.0, 1.0), 3: (0.0, 6.0)}  # fused activation


@dataclass
class BiasCorrection:
    """What the correction did, for the report."""

    ops: int  # convs whose bias moved
    levels: int  # passes of the int8 file (see the module docstring)
    images: int
    seconds: float
    mean_shift_steps: float  # mean |shift| over the corrected channels, in steps of the output's scale

    def as_dict(self) -> dict[str, Any]:
        return {"ops": self.ops, "levels": self.levels, "images": self.images, "seconds": round(self.seconds, 1),
                "mean_shift_steps": round(self.mean_shift_steps, 4)}


@dataclass
class _Conv:
    """One int8 conv's bias, where it lives in the file, and what its output means."""

    op: int  # its index in the int8 file's ops (execution order)
    output: str  # the int8 file's tensor name
    output_index: int  # and its index there
    twin: str  # the float file's tensor of the same op (the same name, but for onnx2tf's constant suffixes)
    level: int  # corrected convs on the longest path before it
    bias: np.ndarray  # writable view into the model bytes (int32, or int64 for 16x8 ops)
    bias_scale: np.ndarray  # per channel: input scale x weight scale
    out_scale: float
    out_zero_point: int
    clamp: tuple[int, int]  # the int8 levels between which the output follows the bias
    rows: int  # output positions per image (the output's size over its channels)


def correct_biases(float_model: Path | bytes, int8_model: bytes, images: np.ndarray, threads: int = 1,
                   progress: bool = True) -> tuple[bytes, BiasCorrection]:
    """``int8_model`` with each conv's bias corrected on ``images`` (N x C x H x W float, the model's input
    space; the first :data:`MAX_IMAGES`, fewer where their float outputs would not fit in :data:`MEMORY_BYTES`)."""
    t0 = time.perf_counter()
    content = bytearray(int8_model)
    convs = _convs(content, _float_outputs(float_model))
    if not convs or not len(images):
        return bytes(content), BiasCorrection(0, 0, 0, time.perf_counter() - t0, 0.0)
    levels = [[c for c in convs if c.level == k] for k in range(max(c.level for c in convs) + 1)]
    levels = [level for level in levels if level]
    images = images[: _images_kept(convs, len(images))]
    bar = progress_bar(len(images) * (len(levels) + 1), "bias correction", progress, unit="img")
    reference = _float_conv_outputs(float_model, images, convs, bar)
    shifts: list[np.ndarray] = []
    for level in levels:  # each pass runs the int8 file only as far as the level's last conv
        prefix = graph_prefix(bytes(content), max(c.op for c in level), [c.output_index for c in level])
        errors = _errors(prefix, images, reference, level, threads, bar)
        for conv in level:
            step = _bias_steps(conv, *errors[conv.output])
            conv.bias += step.astype(conv.bias.dtype)
            shifts.append(np.abs(step * conv.bias_scale / conv.out_scale))
    if bar is not None:
        bar.close()
    moved = sum(bool(np.any(s)) for s in shifts)
    return bytes(content), BiasCorrection(moved, len(levels), len(images), time.perf_counter() - t0,
                                          float(np.concatenate(shifts).mean()))


def mean_errors(float_model: Path | bytes, int8_model: bytes, images: np.ndarray) -> dict[str, np.ndarray]:
    """Per conv output of ``int8_model``: float minus int8, per channel, in output steps, where the int8
    output is inside its clamp (what :func:`correct_biases` takes back), on ``images`` (NCHW)."""
    convs = _convs(bytearray(int8_model), _float_outputs(float_model))
    images = images[: _images_kept(convs, len(images), most=len(images))]
    errors = _errors(int8_model, images, _float_conv_outputs(float_model, images, convs, None), convs, 1, None)
    return {c.output: errors[c.output][0] / c.out_scale for c in convs}


def _images_kept(convs: list[_Conv], given: int, most: int = MAX_IMAGES) -> int:
    """How many of ``given`` images take part: ``most`` at most, as many as their kept float conv outputs
    fit in :data:`MEMORY_BYTES`, one at least."""
    per_image = 4 * sum(c.rows * c.bias.size for c in convs)
    return max(1, min(given, most, MEMORY_BYTES // max(per_image, 1)))


def _bias_steps(conv: _Conv, error: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The bias change, in integer steps, that takes back ``error`` (the mean where the output is inside
    its clamp), for each channel inside it often enough to measure and whose bias can hold it: a channel
    of near-zero weights has a bias step so fine that a small error is billions of them."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        step = np.rint(error / conv.bias_scale)
    limit = np.iinfo(conv.bias.dtype)
    fits = np.isfinite(step) & (np.abs(conv.bias.astype(np.float64) + np.nan_to_num(step)) < limit.max)
    return np.where((inside >= MIN_ACTIVE) & fits, step, 0.0)


def _float_outputs(float_model: Path | bytes) -> dict[str, tuple[str, tuple[int, ...]]]:
    """:func:`op_key` -> (name, shape) of every float tensor an op of the float file writes, where the key
    names one tensor only."""
    from dgh_deploy.runtime.litert_runner import open_interpreter

    it = open_interpreter(float_model, delegates=False)
    details = {int(t["index"]): t for t in it.get_tensor_details()}
    written = [details[int(i)] for op in it._get_ops_details() for i in op["outputs"]]  # no public op list
    keys = [op_key(str(t["name"])) for t in written]
    return {key: (str(t["name"]), tuple(int(s) for s in t["shape"])) for key, t in zip(keys, written, strict=True)
            if t["dtype"] == np.float32 and keys.count(key) == 1}


def op_key(name: str) -> str:
    """A tensor name less the names of the constants fused into its op: TensorFlow's converter numbers them
    (``...convolution;Const_21`` in the float file, ``...;Const_431`` in the int8 one); the op names stay."""
    return ";".join(part for part in name.split(";") if not re.fullmatch(r"Const(_\d+)?", part))


def _convs(content: bytearray, float_outputs: dict[str, tuple[str, tuple[int, ...]]]) -> list[_Conv]:
    """The int8 file's convs with a bias of their own and a float twin, in execution order, with their level."""
    schema = tflite_schema()
    model = schema.Model.GetRootAsModel(content, 0)
    graph = model.Subgraphs(0)
    kinds = {getattr(schema.BuiltinOperator, n) for n in CORRECTED_OPS}
    users = _buffer_users(graph)
    depth: dict[int, int] = {}  # tensor -> corrected convs on the longest path that made it
    convs = []
    for i in range(graph.OperatorsLength()):  # a TFLite subgraph lists its ops in execution order
        op = graph.Operators(i)
        level = max((depth.get(int(t), 0) for t in op.InputsAsNumpy() if t >= 0), default=0)
        code = model.OperatorCodes(op.OpcodeIndex())
        conv = None
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) in kinds and op.InputsLength() >= 3 \
                and op.Inputs(2) >= 0:
            conv = _conv(content, model, graph, i, level, users, float_outputs)
        if conv is not None:
            convs.append(conv)
        for t in op.OutputsAsNumpy():
            depth[int(t)] = level + (conv is not None)
    return convs


def _conv(content: bytearray, model: Any, graph: Any, index: int, level: int, users: dict[int, int],
          float_outputs: dict[str, tuple[str, tuple[int, ...]]]) -> _Conv | None:
    op = graph.Operators(index)
    x, w, b, out = (graph.Tensors(j) for j in (op.Inputs(0), op.Inputs(1), op.Inputs(2), op.Outputs(0)))
    name = out.Name().decode()
    shape = tuple(int(s) for s in out.ShapeAsNumpy())
    twin, float_shape = float_outputs.get(op_key(name), ("", ()))
    if float_shape != shape or users.get(b.Buffer(), 0) != 1 or out.Quantization() is None:
        return None
    bias = _buffer_view(content, model, b)
    if bias is None or bias.size != shape[-1]:
        return None
    w_scale = w.Quantization().ScaleAsNumpy().astype(np.float64)
    x_scale = float(x.Quantization().ScaleAsNumpy()[0])
    out_scale = float(out.Quantization().ScaleAsNumpy()[0])
    out_zp = int(out.Quantization().ZeroPointAsNumpy()[0])
    levels = np.iinfo(np.int8 if bias.dtype == np.int32 else np.int16)
    lo, hi = _ACTIVATION_BOUNDS.get(_fused_activation(op), (-np.inf, np.inf))
    clamp = (_level(lo, out_scale, out_zp, levels), _level(hi, out_scale, out_zp, levels))
    bias_scale = np.broadcast_to(x_scale * w_scale, bias.shape).copy()
    rows = int(np.prod(shape[:-1]))
    return _Conv(index, name, op.Outputs(0), twin, level, bias, bias_scale, out_scale, out_zp, clamp, rows)


def _level(value: float, scale: float, zero_point: int, levels: np.iinfo) -> int:
    """The integer level of ``value``, inside the type's ends (which clamp too)."""
    if not np.isfinite(value):
        return int(levels.min if value < 0 else levels.max)
    return int(np.clip(np.rint(value / scale) + zero_point, levels.min, levels.max))


def _fused_activation(op: Any) -> int:
    """The op's fused activation (0 none, 1 ReLU, 2 ReLU-1..1, 3 ReLU6)."""
    schema = tflite_schema()
    table = op.BuiltinOptions()
    kind = op.BuiltinOptionsType()
    cls = {schema.BuiltinOptions.Conv2DOptions: schema.Conv2DOptions,
           schema.BuiltinOptions.DepthwiseConv2DOptions: schema.DepthwiseConv2DOptions,
           schema.BuiltinOptions.FullyConnectedOptions: schema.FullyConnectedOptions}.get(kind)
    if table is None or cls is None:
        return 0
    options = cls()
    options.Init(table.Bytes, table.Pos)
    return int(options.FusedActivationFunction())


def _buffer_users(graph: Any) -> dict[int, int]:
    """Buffer index -> how many tensors read it (a shared bias must not move for one of them)."""
    users: dict[int, int] = {}
    for j in range(graph.TensorsLength()):
        buf = graph.Tensors(j).Buffer()
        users[buf] = users.get(buf, 0) + 1
    return users


def _buffer_view(content: bytearray, model: Any, tensor: Any) -> np.ndarray | None:
    """A writable int32 / int64 view of ``tensor``'s constant data inside ``content``."""
    schema = tflite_schema()
    dtype = {schema.TensorType.INT32: np.int32, schema.TensorType.INT64: np.int64}.get(tensor.Type())
    buf = model.Buffers(tensor.Buffer())
    if dtype is None or buf is None:
        return None
    if buf.Offset() > 1:  # stored after the flatbuffer (litert-torch's large weights)
        return np.frombuffer(content, dtype=dtype, count=int(buf.Size()) // np.dtype(dtype).itemsize,
                             offset=int(buf.Offset()))
    data = buf.DataAsNumpy()  # a view into ``content``: the flatbuffer reads from it
    return data.view(dtype) if isinstance(data, np.ndarray) and data.size else None


def _float_conv_outputs(float_model: Path | bytes, images: np.ndarray, convs: list[_Conv],
                        bar: Any) -> list[dict[str, np.ndarray]]:
    """Each image's float conv outputs (rows x channels).

    One thread, as the ranges take: the int8 file must not depend on the machine's cores."""
    from dgh_deploy.runtime.litert_runner import open_interpreter

    it = open_interpreter(float_model, num_threads=1, preserve_all=True, delegates=False)
    index = _tensor_indices(it)
    kept: list[dict[str, np.ndarray]] = []
    for image in images:
        _invoke(it, image)
        kept.append({c.output: it.get_tensor(index[c.twin]).reshape(-1, c.bias.size).copy() for c in convs})
        if bar is not None:
            bar.update(1)
    return kept


def _errors(int8_model: bytes, images: np.ndarray, reference: list[dict[str, np.ndarray]],
            convs: list[_Conv], threads: int, bar: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per conv: the float output minus the int8 one, per channel, averaged where the int8 output is inside
    its clamp (elsewhere the bias does not reach it), and how often it is inside."""
    from dgh_deploy.runtime.litert_runner import open_interpreter

    it = open_interpreter(int8_model, num_threads=threads, preserve_all=True, delegates=False)
    index = _tensor_indices(it)
    sums = {c.output: np.zeros(c.bias.size) for c in convs}
    inside = {c.output: np.zeros(c.bias.size) for c in convs}
    rows = dict.fromkeys(sums, 0)
    for image, floats in zip(images, reference, strict=True):
        _invoke(it, image)
        for c in convs:
            q = it.get_tensor(index[c.output]).reshape(-1, c.bias.size)
            free = (q > c.clamp[0]) & (q < c.clamp[1])
            error = floats[c.output] - (q.astype(np.float32) - c.out_zero_point) * np.float32(c.out_scale)
            sums[c.output] += np.where(free, error, 0.0).sum(0, dtype=np.float64)
            inside[c.output] += free.sum(0)
            rows[c.output] += len(q)
        if bar is not None:
            bar.update(1)
    return {name: (sums[name] / np.maximum(inside[name], 1), inside[name] / rows[name]) for name in sums}


def _tensor_indices(it: Any) -> dict[str, int]:
    return {str(t["name"]): int(t["index"]) for t in it.get_tensor_details()}


def _invoke(it: Any, image: np.ndarray) -> None:
    """Run ``it`` on one NCHW image, as the file takes it (the runner's own mapping: layout, int8 input)."""
    from dgh_deploy.runtime.litert_runner import file_input, tensor_io

    inp = tensor_io(it.get_input_details()[0])
    it.set_tensor(inp.index, file_input(image[None], inp, Path("the model being corrected")))
    it.invoke()
