"""Rewrites of a .tflite flatbuffer that every TFLite runtime reads the same way.

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
    schema = _schema()
    model = schema.ModelT.InitFromPackedBuf(content, 0)
    outside = [b for b in (model.buffers or []) if b.offset and b.offset > 1]
    if not outside or sum(int(b.size) for b in outside) > INLINE_LIMIT:
        return content
    for b in outside:
        b.data = np.frombuffer(content, dtype=np.uint8, count=int(b.size), offset=int(b.offset))
        b.offset, b.size = 0, 0
    import flatbuffers

    builder = flatbuffers.Builder(len(content) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def outside_buffers(content: bytes) -> int:
    """How many of the model's buffers are stored after the flatbuffer."""
    model = _schema().Model.GetRootAsModel(content, 0)
    return sum(1 for i in range(model.BuffersLength()) if model.Buffers(i).Offset() > 1)


def _schema() -> Any:
    """The TFLite schema's generated Python (object API), from whichever TFLite package is installed."""
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError:
        from tflite_micro.tensorflow.lite.python import schema_py_generated
    return schema_py_generated
