"""Where LiteRT's and TFLite Micro's kernels part, op by op, on the same int8 file and input.

The same full-integer file can score differently on the desktop runtime and on the microcontroller
one (YOLOv5n at 320: 26.34 against 27.16 mAP50-95 on the same 128 images): their int8 kernels
round requantization and approximate LOGISTIC and friends differently. Both interpreters run one
input with every tensor kept, and each op's output is compared in int8 steps. Because a difference
travels downstream, an op is charged with the difference it *adds*: its output's RMS difference
less its inputs' largest, in steps; the first op to differ at all is where the kernels part first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgh_deploy.runtime.litert_runner import file_input, open_interpreter, tensor_io
from dgh_deploy.runtime.native_stderr import captured_stderr
from dgh_deploy.targets.tflite.layer_sqnr import full_path, module_path

SHOWN = 5  # ops in the report, by the difference they add


@dataclass(frozen=True)
class KernelDifference:
    index: int
    op: str
    layer: str  # the module, as the per-layer diagnosis names it
    max_steps: int  # largest difference of one element, in int8 (or int16) steps
    share: float  # share of the elements that differ
    added_rms: float  # RMS difference (steps) the op adds to its inputs' largest

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "op": self.op, "layer": self.layer, "max_steps": self.max_steps,
                "share_differing": round(self.share, 5), "added_rms_steps": round(self.added_rms, 3)}


def kernel_differences(path: Path, image: np.ndarray, arena_limit: int,
                       names: list[str]) -> tuple[list[KernelDifference], int]:
    """Every op whose output differs between LiteRT (reference kernels) and TFLite Micro on ``image``
    (one N=1 model input, NCHW float32), in execution order; and how many ops were compared.
    ``names``: the exported module's, to name each op's module as the per-layer diagnosis does."""
    lite = open_interpreter(path, preserve_all=True, delegates=False)
    inp = tensor_io(lite.get_input_details()[0])
    x = file_input(image, inp, path)
    lite.set_tensor(inp.index, x)
    lite.invoke()
    micro = _micro(path, arena_limit)
    micro.set_input(x, 0)
    micro.invoke()
    tensors = {t["index"]: t["name"] for t in lite.get_tensor_details()}
    rms: dict[int, float] = {}
    rows = []
    ops = lite._get_ops_details()  # the public API has no op list
    for op in ops:
        out = int(op["outputs"][0])
        a = lite.get_tensor(out)
        b = np.asarray(micro.GetTensor(out, 0)["tensor_data"]).reshape(a.shape)
        if a.dtype.kind not in "iu":
            continue
        d = np.abs(a.astype(np.int64) - b.astype(np.int64))
        rms[out] = math.sqrt(float((d.astype(np.float64) ** 2).mean())) if d.size else 0.0
        if d.size and d.max() > 0:
            before = max((rms.get(int(i), 0.0) for i in op["inputs"] if i >= 0), default=0.0)
            layer = full_path(module_path(tensors[out]), names)
            rows.append(KernelDifference(int(op["index"]), str(op["op_name"]), layer, int(d.max()),
                                         float((d > 0).mean()), rms[out] - before))
    return rows, len(ops)


def _micro(path: Path, arena_limit: int) -> Any:
    """TFLite Micro with every tensor kept (a larger arena than inference alone: grown until it fits)."""
    from tflite_micro.python.tflite_micro import runtime

    arena = max(1 << 22, 40 * path.stat().st_size)
    while True:
        with captured_stderr():
            try:
                return runtime.Interpreter.from_file(str(path), arena_size=arena,
                                                     intrepreter_config=runtime.InterpreterConfig.kPreserveAllTensors)
            except RuntimeError:
                if arena >= arena_limit:
                    raise
                arena *= 4


def summary(rows: list[KernelDifference], ops: int) -> dict[str, Any]:
    """The report's view: how many ops differ, the first, and those adding the most difference."""
    first = rows[0].as_dict() if rows else None
    largest = sorted(rows, key=lambda r: -r.added_rms)[:SHOWN]
    by_type: dict[str, int] = {}
    for r in rows:
        if r.added_rms > 0:
            by_type[r.op] = by_type.get(r.op, 0) + 1
    return {"images": 1, "ops": ops, "ops_differing": len(rows), "first": first,
            "adding_most": [r.as_dict() for r in largest], "adding_by_op": by_type}
