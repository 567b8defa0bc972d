"""The full-integer detector file, rewrapped as the .tflite ``yolo export`` writes: ``--layout ultralytics``.

Ultralytics' LiteRT backend wants a float32 NHWC image in and one ``[1, 4 + nc, anchors]`` output
(normalised ``cx cy w h``, then class scores), with its metadata appended. Converting a model
whose last op joins boxes and scores would make that join int8, one scale for both (boxes reach
~1.2, so the scores would keep fewer steps; see :class:`~dgh_deploy.tasks.detect_layout.DetectLayout`).
Instead the split full-integer file is kept op for op and only its boundary is rewritten in the
flatbuffer: a QUANTIZE before its int8 input, a DEQUANTIZE after each int8 output, and the join
(and the transposition to channels-first) in float32 after them. The int8 graph is therefore the
very graph the job checked and TFLite Micro ran; boxes and scores keep their own scales, and the
float ops are the boundary ones only (as in Ultralytics' own int8 LiteRT export).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dgh_deploy.artifacts import atomic_path
from dgh_deploy.errors import DGHError
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.runtime.base import Runner
from dgh_deploy.runtime.litert_runner import FileLayout, LiteRTRunner, file_layout, open_interpreter
from dgh_deploy.runtime.split_view import SplitView
from dgh_deploy.tasks.ultralytics_format import embed_metadata, model_layout, ultralytics_metadata

TFLITE_IDENTIFIER = b"TFL3"
INPUT_NAME = "images"
OUTPUT_NAME = "output0"
# The boundary ops: all that runs in float in the rewrapped file.
BOUNDARY_OPS = ("QUANTIZE", "DEQUANTIZE", "CONCATENATION", "TRANSPOSE")
# The rewrapped file may differ from the split one by input rounding (QUANTIZE's ties against the
# runner's): a few output steps at most. A wiring mistake (order, transposition) moves whole boxes.
MAX_STEPS = 4


def ultralytics_artifact(model: LoadedModel, split: Path, shapes: list[tuple[int, ...]], dst: Path,
                         images: np.ndarray, threads: int) -> tuple[Runner, dict[str, Any]]:
    """Write ``dst`` from the checked split file ``split`` (outputs of ``shapes``), check it gives the
    split file's outputs on ``images``, and return its runner (in the model's layout) and report facts."""
    from dgh_deploy.targets.tflite.integer_ops import list_float_ops

    layout = model_layout(model)
    source = file_layout(open_interpreter(split), split, shapes)
    metadata = ultralytics_metadata(model, layout.nc, int(model.extra.get("stride", 32)))
    with atomic_path(dst) as tmp:
        write_ultralytics_file(split, tmp, source, metadata)
    runner = SplitView(LiteRTRunner(dst, threads), layout)
    steps = _deviation_in_steps(LiteRTRunner(split, threads, shapes), runner, source, images)
    allowed = {*BOUNDARY_OPS, *(f.op for f in list_float_ops(split))}  # --allow-float-ops: the split file's own
    unexpected = [f.op for f in list_float_ops(dst) if f.op not in allowed]
    if steps > MAX_STEPS or unexpected:
        why = f"float ops {sorted(set(unexpected))}" if unexpected else f"outputs {steps:.1f} int8 steps off"
        raise DGHError(f"the Ultralytics-layout file does not reproduce the int8 file ({why})",
                       "use --layout split and report this model")
    return runner, {"file": dst.name, "split_file": split.name, "io": runner.io_details(),
                    "max_deviation_steps": round(steps, 2), "float_ops": list(BOUNDARY_OPS),
                    "metadata": {k: metadata[k] for k in ("task", "stride", "imgsz", "batch")}}


def _deviation_in_steps(split: LiteRTRunner, rewrapped: SplitView, source: FileLayout, images: np.ndarray) -> float:
    """Largest difference of the two files' outputs, in int8 steps of each output."""
    worst = 0.0
    for a, b, io in zip(split.infer(images), rewrapped.infer(images), source.outputs, strict=True):
        worst = max(worst, float(np.abs(a - b).max()) / (io.scale or 1.0))
    return worst


def write_ultralytics_file(src: Path, dst: Path, layout: FileLayout, metadata: dict[str, Any]) -> None:
    """``src`` (full-integer, split outputs in ``layout``'s order) -> ``dst``: float I/O, one output, metadata."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    model = fb.ModelT.InitFromPackedBuf(src.read_bytes(), 0)
    graph = _Graph(model, fb)
    new_input = graph.quantize_input(layout.input.index)
    new_output = graph.join_outputs([o.index for o in layout.outputs], channel_last=layout.perms[0] is not None)
    graph.set_signature(new_input, new_output)
    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    dst.write_bytes(bytes(builder.Output()))
    embed_metadata(dst, metadata)


class _Graph:
    """Edits of subgraph 0 of a flatbuffer model in the schema's object API."""

    def __init__(self, model: Any, fb: Any) -> None:
        self.model, self.fb, self.sg = model, fb, model.subgraphs[0]

    def _buffer(self, data: np.ndarray | None = None) -> int:
        buf = self.fb.BufferT()
        if data is not None:
            buf.data = np.frombuffer(data.tobytes(), np.uint8)
        self.model.buffers.append(buf)
        return len(self.model.buffers) - 1

    def _tensor(self, name: str, shape: list[int], dtype: int, data: np.ndarray | None = None) -> int:
        t = self.fb.TensorT()
        t.name, t.shape, t.type = name.encode(), np.array(shape, np.int32), dtype
        t.buffer = self._buffer(data)
        self.sg.tensors.append(t)
        return len(self.sg.tensors) - 1

    def _opcode(self, op: int) -> int:
        for i, code in enumerate(self.model.operatorCodes):
            if max(code.builtinCode, code.deprecatedBuiltinCode) == op:
                return i
        code = self.fb.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = op, min(op, 127), 1  # 127: "see builtinCode"
        self.model.operatorCodes.append(code)
        return len(self.model.operatorCodes) - 1

    def _op(self, op: int, inputs: list[int], outputs: list[int], options: Any = None,
            options_type: int = 0) -> Any:
        o = self.fb.OperatorT()
        o.opcodeIndex = self._opcode(op)
        o.inputs, o.outputs = np.array(inputs, np.int32), np.array(outputs, np.int32)
        o.builtinOptionsType, o.builtinOptions = options_type, options
        return o

    def quantize_input(self, index: int) -> int:
        """A float32 input quantized into the int8 one; returns the new input tensor."""
        old = self.sg.tensors[index]
        new = self._tensor(INPUT_NAME, list(old.shape), self.fb.TensorType.FLOAT32)
        self.sg.operators.insert(0, self._op(self.fb.BuiltinOperator.QUANTIZE, [new], [index]))
        self.sg.inputs = np.array([new], np.int32)
        return new

    def join_outputs(self, indices: list[int], channel_last: bool) -> int:
        """Dequantize each output, join them on the channel axis, channels-first: returns the output tensor."""
        fb, ops = self.fb, self.sg.operators
        floats = []
        for i in indices:
            t = self.sg.tensors[i]
            floats.append(self._tensor(f"{t.name.decode()}_float", list(t.shape), fb.TensorType.FLOAT32))
            ops.append(self._op(fb.BuiltinOperator.DEQUANTIZE, [i], [floats[-1]]))
        shapes = [list(self.sg.tensors[i].shape) for i in indices]
        axis = 2 if channel_last else 1
        joined = [*shapes[0][:axis], sum(s[axis] for s in shapes), *shapes[0][axis + 1:]]
        concat = fb.ConcatenationOptionsT()
        concat.axis = axis
        out = self._tensor(OUTPUT_NAME if not channel_last else "joined", joined, fb.TensorType.FLOAT32)
        ops.append(self._op(fb.BuiltinOperator.CONCATENATION, floats, [out], concat,
                            fb.BuiltinOptions.ConcatenationOptions))
        if channel_last:  # onnx2tf writes N x A x C; Ultralytics reads N x C x A
            perm = self._tensor("perm", [3], fb.TensorType.INT32, np.array([0, 2, 1], np.int32))
            final = self._tensor(OUTPUT_NAME, [joined[0], joined[2], joined[1]], fb.TensorType.FLOAT32)
            ops.append(self._op(fb.BuiltinOperator.TRANSPOSE, [out, perm], [final], fb.TransposeOptionsT(),
                                fb.BuiltinOptions.TransposeOptions))
            out = final
        self.sg.outputs = np.array([out], np.int32)
        return out

    def set_signature(self, input_index: int, output_index: int) -> None:
        """The serving signature names the new tensors (runners order outputs by it)."""
        for sig in self.model.signatureDefs or []:
            tin, tout = self.fb.TensorMapT(), self.fb.TensorMapT()
            tin.name, tin.tensorIndex = INPUT_NAME.encode(), input_index
            tout.name, tout.tensorIndex = OUTPUT_NAME.encode(), output_index
            sig.inputs, sig.outputs = [tin], [tout]
