"""Is a .tflite file really full-integer? Every op, every tensor it touches, and the I/O dtypes.

A converter can quietly leave an op in float (an op with no int8 kernel gets a DEQUANTIZE before
it and a QUANTIZE after it): the file still runs on the CPU, but a single-partition NPU (Edge TPU,
Ethos-U) hands that op and everything after it back to the CPU. So we read the op list on the
reference kernels (the XNNPACK delegate would fold ops into one opaque DELEGATE node) and list
each op with a float operand or result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgh_deploy.errors import DGHError

FLOAT_DTYPES = (np.float16, np.float32, np.float64)
INTEGER_IO = ("int8", "uint8", "int16")  # int16: the 16x8 mode (int16 activations, int8 weights)


@dataclass(frozen=True)
class FloatOp:
    """An op that reads or writes float tensors (QUANTIZE from float and DEQUANTIZE included)."""

    index: int  # position in the execution plan
    op: str  # TFLite builtin name, e.g. DEQUANTIZE
    float_tensors: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def list_float_ops(path: str | Path) -> list[FloatOp]:
    """Every op of ``path`` with a float input or output, in execution order."""
    from dgh_deploy.runtime.litert_runner import open_interpreter

    it = open_interpreter(path, delegates=False)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    found: list[FloatOp] = []
    for op in it._get_ops_details():  # the public API has no op list; this is what LiteRT's tools read
        names = []
        for idx in [*op["inputs"], *op["outputs"]]:
            if idx < 0:  # an omitted optional input
                continue
            t = tensors.get(int(idx))
            if t is not None and np.dtype(t["dtype"]).type in FLOAT_DTYPES:
                names.append(t["name"])
        if names:
            found.append(FloatOp(int(op["index"]), str(op["op_name"]), tuple(dict.fromkeys(names))))
    return found


def io_dtypes(path: str | Path) -> dict[str, list[str]]:
    from dgh_deploy.runtime.litert_runner import open_interpreter

    it = open_interpreter(path, delegates=False)
    return {
        "inputs": [np.dtype(d["dtype"]).name for d in it.get_input_details()],
        "outputs": [np.dtype(d["dtype"]).name for d in it.get_output_details()],
    }


def check_full_integer(path: str | Path, io_dtype: str = "int8", allow_float_ops: bool = False) -> list[dict[str, Any]]:
    """Raise :class:`DGHError` unless ``path`` is integer-only with ``io_dtype`` I/O.

    With ``allow_float_ops`` float ops are tolerated and returned (for the report); the I/O
    dtype is always checked, since a float input means the caller would feed the wrong thing.
    """
    if io_dtype not in INTEGER_IO:
        raise DGHError(f"integer I/O dtype '{io_dtype}' is not supported", f"use one of {', '.join(INTEGER_IO)}")
    io = io_dtypes(path)
    wrong = [f"{kind[:-1]} {i} is {dt}" for kind, dts in io.items() for i, dt in enumerate(dts) if dt != io_dtype]
    if wrong:
        raise DGHError(
            f"'{Path(path).name}' does not have {io_dtype} I/O ({'; '.join(wrong)})",
            "the converter did not apply the requested I/O type: rerun verbose to read the onnx2tf log",
        )
    float_ops = list_float_ops(path)
    if float_ops and not allow_float_ops:
        kinds = sorted({f.op for f in float_ops})
        # Name the op that lacks an int8 kernel, not the DEQUANTIZE the converter put before it.
        culprit = next((f for f in float_ops if f.op not in ("QUANTIZE", "DEQUANTIZE")), float_ops[0])
        raise DGHError(
            f"'{Path(path).name}' is not full-integer: {len(float_ops)} op(s) run in float "
            f"({', '.join(kinds)}; e.g. {culprit.op} #{culprit.index} -> '{culprit.float_tensors[-1]}')",
            "replace those layers with int8-capable ops, or pass --allow-float-ops to accept a mixed model",
        )
    return [f.as_dict() for f in float_ops]
