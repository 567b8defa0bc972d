"""ONNX Runtime on the CPU: runs float ONNX models and Q/DQ (QuantizeLinear/DequantizeLinear) models.

For a Q/DQ model this is the CPU stand-in for TensorRT's INT8 engine. ORT's CPU kernels may
run a ``DQ -> Conv -> Q`` group in float (dequantized int8 weights and activations) instead
of int8 arithmetic; every tensor that TensorRT would hold in int8 still passes through the
same int8 grid (same scales, zero point 0, round-half-to-even, clamp to [-128, 127]), so the
outputs follow TensorRT's int8 math closely, differing by accumulation order and rounding of
the int32 requantization only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dgh_deploy.errors import DGHError, exc_reason
from dgh_deploy.runtime.base import Runner

ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(int8)": "int8",
             "tensor(uint8)": "uint8"}


class OnnxRuntimeRunner(Runner):
    """``OnnxRuntimeRunner(path_or_bytes, threads)``: N x 3 x H x W float32 in, float32 outputs out."""

    name = "onnxruntime-cpu"

    def __init__(self, model: str | Path | bytes, threads: int = 2) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(threads))
        so.inter_op_num_threads = 1
        so.log_severity_level = 3  # ORT's warnings about unused initializers are noise here
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            what = "the ONNX model" if isinstance(model, bytes) else f"'{model}'"
            reason = exc_reason(exc)
            raise DGHError(
                f"ONNX Runtime cannot load {what} ({reason})", "re-export the model; check its opset and ops"
            ) from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise DGHError(f"the ONNX model has {len(inputs)} inputs, not one image input", "export one input")
        self.input_name = inputs[0].name
        batch = inputs[0].shape[0] if inputs[0].shape else None
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.output_names = [o.name for o in self.session.get_outputs()]

    def io_details(self) -> dict[str, Any]:
        def describe(arg: Any) -> dict[str, Any]:  # a dynamic dimension (a name) is -1
            shape = [d if isinstance(d, int) else -1 for d in arg.shape]
            dtype = ORT_TYPES.get(arg.type, arg.type)
            return {"name": arg.name, "shape": shape, "dtype": dtype, "scale": 0.0, "zero_point": 0}

        return {"input": describe(self.session.get_inputs()[0]),
                "outputs": [describe(o) for o in self.session.get_outputs()]}

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.fixed_batch is None or len(x) == self.fixed_batch:
            return [np.asarray(o, dtype=np.float32) for o in self.session.run(None, {self.input_name: x})]
        # A static-batch model: run it in chunks, padding the last one, and drop the padding.
        b = self.fixed_batch
        chunks = []
        for i in range(0, len(x), b):
            part = x[i : i + b]
            n = len(part)
            if n < b:
                part = np.concatenate([part, np.zeros((b - n, *part.shape[1:]), np.float32)])
            outs = self.session.run(None, {self.input_name: part})
            chunks.append([np.asarray(o, dtype=np.float32)[:n] for o in outs])
        return [np.concatenate([c[k] for c in chunks]) for k in range(len(chunks[0]))]
