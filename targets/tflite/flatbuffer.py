"""Rewrites of a .tflite flatbuffer that every TFLite runtime reads the same way.

Inlined weights (:func:`inline_buffers`), uint8 model I/O around an int8 graph (:func:`uint8_io`), and
the graph cut after one op (:func:`graph_prefix`).

litert-torch and ai-edge-quantizer store most weights outside the flatbuffer (a buffer's
``offset`` and ``size`` into the file, after it). LiteRT reads them there; TFLite Micro 0.dev2026
reads only a buffer's inline ``data``, so it ran those files with empty weights: the demo's int8
file gave 0% top-1 agreement with LiteRT, and 1 int8 step of difference at most once the buffers
were inlined. Edge models are far below the flatbuffer's 2 GB limit, so inlining costs nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# A flatbuffer's offsets are 32-bit: above this, leave the weights outside (no MCU runs such a model).
INLINE_LIMIT = 1 << 30


def inline_buffers(content: bytes) -> bytes:
    """``content`` with every buffer stored after the flatbuffer moved into it (the same model)."""
    schema = tflite_schema()
    model = schema.ModelT.InitFromPackedBuf(content, 0)
    outside = [b for b in (model.buffers or []) if b.offset and b.offset > 1]
    if not outside or sum(int(b.size) for b in outside) > INLINE_LIMIT:
        return content
    for b in outside:
        b.data = np.frombuffer(content, dtype=np.uint8, count=int(b.size), offset=int(b.offset))
        b.offset, b.size = 0, 0
    return _packed(model, len(content))


def graph_prefix(content: bytes, last_op: int, outputs: list[int]) -> bytes:
    """The model ``content`` (weights inside the flatbuffer) run only up to its op ``last_op`` (execution
    order), with the tensors ``outputs`` as its outputs: what an op computes, without computing the rest.
    Signatures go: they name the whole graph's outputs."""
    model = tflite_schema().ModelT.InitFromPackedBuf(content, 0)
    graph = model.subgraphs[0]
    graph.operators = graph.operators[: last_op + 1]
    graph.outputs = list(outputs)
    model.signatureDefs = []
    return _packed(model, len(content))


def outside_buffers(content: bytes) -> int:
    """How many of the model's buffers are stored after the flatbuffer."""
    model = tflite_schema().Model.GetRootAsModel(content, 0)
    return sum(1 for i in range(model.BuffersLength()) if model.Buffers(i).Offset() > 1)


def uint8_io(content: bytes) -> bytes:
    """The int8-I/O model ``content`` with uint8 inputs and outputs: one QUANTIZE op each way.

    ai-edge-quantizer's static recipes write int8 I/O only; uint8 cameras and NPUs want uint8.
    An int8 tensor of scale s and zero point z is the uint8 tensor of scale s and zero point
    z + 128 shifted by 128, so TFLite's QUANTIZE (a requantization between the two types, in every
    TFLite runtime) converts exactly, as TensorFlow's own converter does for uint8 I/O.
    """
    schema = tflite_schema()
    model = schema.ModelT.InitFromPackedBuf(content, 0)
    graph = model.subgraphs[0]
    code = _opcode(model, schema, schema.BuiltinOperator.QUANTIZE)
    renamed: dict[int, int] = {}
    head, tail = [], []
    for old in list(graph.inputs):
        new = renamed[int(old)] = _uint8_twin(graph, schema, int(old))
        head.append(_quantize_op(schema, code, new, int(old)))
    for old in list(graph.outputs):
        new = renamed[int(old)] = _uint8_twin(graph, schema, int(old))
        tail.append(_quantize_op(schema, code, int(old), new))
    graph.operators = head + list(graph.operators) + tail
    graph.inputs = [renamed[int(i)] for i in graph.inputs]
    graph.outputs = [renamed[int(i)] for i in graph.outputs]
    for sig in model.signatureDefs or []:
        for entry in [*(sig.inputs or []), *(sig.outputs or [])]:
            entry.tensorIndex = renamed.get(int(entry.tensorIndex), entry.tensorIndex)
    return _packed(model, len(content))


def _packed(model: Any, size: int) -> bytes:
    """The object-API ``model`` as .tflite bytes (``size``: about how large)."""
    import flatbuffers

    builder = flatbuffers.Builder(size + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _uint8_twin(graph: Any, schema: Any, index: int) -> int:
    """A uint8 tensor like int8 tensor ``index`` (zero point + 128), appended; its index."""
    old = graph.tensors[index]
    if old.type != schema.TensorType.INT8:
        raise ValueError(f"model I/O tensor '{old.name}' is not int8")
    q = schema.QuantizationParametersT()
    q.scale = list(old.quantization.scale)
    q.zeroPoint = [int(z) + 128 for z in old.quantization.zeroPoint]
    new = schema.TensorT()
    new.shape, new.shapeSignature = old.shape, old.shapeSignature
    new.type, new.buffer, new.quantization = schema.TensorType.UINT8, 0, q  # buffer 0: the empty one
    name = old.name.decode() if isinstance(old.name, bytes) else str(old.name)
    new.name, old.name = name, f"{name}_int8"  # the model's I/O keeps its name
    graph.tensors.append(new)
    return len(graph.tensors) - 1


def _opcode(model: Any, schema: Any, builtin: int) -> int:
    """The index of ``builtin``'s operator code in ``model``, added when missing."""
    for i, code in enumerate(model.operatorCodes):
        if max(int(code.builtinCode), int(code.deprecatedBuiltinCode)) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 2
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _quantize_op(schema: Any, code: int, src: int, dst: int) -> Any:
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = code, [src], [dst]
    op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.QuantizeOptions, schema.QuantizeOptionsT()
    return op


def tflite_schema() -> Any:
    """The TFLite schema's generated Python (object API), from whichever TFLite package is installed."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        from tflite_micro.tensorflow.lite.python import schema_py_generated
    return schema_py_generated
