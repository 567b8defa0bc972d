"""A .tflite model on TFLite Micro (``tflite-micro``'s Python interpreter), behind the common Runner interface.

TFLite Micro is what a microcontroller runs: its reference kernels (CMSIS-NN's are meant to match
them bit for bit) and a fixed tensor arena, the RAM the model needs besides its weights. LiteRT's
XNNPACK kernels round some int8 ops differently, so the same int8 file can give slightly other
answers on the device than on the desktop; this runner lets the job score the file where it ships.

The file is the one LiteRT runs, so the input quantization, the output order and the layout back
to PyTorch's come from the LiteRT runner's shared functions (:func:`file_layout`): TFLite Micro
numbers outputs by their place in the file, which the layout records. The interpreter prints its
diagnostics from C++ to the process's stderr; they are captured, so a failure becomes one line.
Some files make it abort the process outright, so each file is first opened and run once in a
child process (:func:`probe`). The one cause seen so far is an int8 tensor whose calibration values
were all equal (an untrained YOLOv8 head's DFL box distances): its scale collapses to ~1e-8 and
TFLite Micro's SUB cannot express the rescale while preparing; the abort is reported with that
tensor's name (:func:`collapsed_ranges`).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from dgh_deploy.errors import DGHError, exc_reason
from dgh_deploy.runtime.base import Runner
from dgh_deploy.runtime.litert_runner import file_input, file_layout, open_interpreter, torch_output
from dgh_deploy.runtime.native_stderr import captured_stderr
from dgh_deploy.runtime.tflite_micro_worker import receive, run_on, send
from dgh_deploy.versions import installed_version

# Real images scored on TFLite Micro at most (spread evenly, like --val-limit): its reference
# kernels take about 30 ms per image for ResNet-20 at 32x32 and 1 s for YOLOv5n at 320 on one
# core, so 2,000 images cost a minute for the first and half an hour for the second.
IMAGE_LIMIT = 2000
ARENA_LIMIT = 1 << 30  # the arena is grown up to this many bytes before the model is given up on
UNSUPPORTED_FIX = "the model has an op or a layout TFLite Micro's kernels lack: replace it in the model"
COLLAPSED_FIX = ("calibrate on images that vary that tensor (a trained model's DGH images do), or check the "
                 "weights: a tensor that is the same for every image is computed, not learnt")
# An int8 scale this small means the calibration range was empty: every value the same.
COLLAPSED_SCALE = 1e-6
_ARENA_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")


class TFLiteMicroRunner(Runner):
    """Runs a .tflite file on TFLite Micro: NCHW float32 in, float32 outputs in PyTorch's layout out.

    ``arena_bytes`` is the tensor arena the model used (TFLite Micro's recording allocator,
    measured after one inference): the RAM to reserve on the device besides the weights.
    ``image_limit`` caps the real images the job scores on it (the interpreter is slow).
    ``workers``: processes a batch's images are shared among (default: one per available core),
    each with its own interpreter; the kernels are deterministic, so the outputs are the same.
    """

    name = "tflite-micro"

    def __init__(self, path: str | Path, output_shapes: list[tuple[int, ...]] | None = None,
                 image_limit: int | None = IMAGE_LIMIT, workers: int | None = None) -> None:
        self.path = Path(path)
        self.image_limit = image_limit
        layout = file_layout(open_interpreter(self.path, delegates=False), self.path, output_shapes)
        self.input, self.outputs, self._perms = layout.input, layout.outputs, layout.perms
        self._positions = layout.positions
        self._it, self._arena = _open(self.path)
        self.arena_bytes = self._measure_arena()
        self.workers = max(1, workers if workers is not None else len(os.sched_getaffinity(0)))
        self._procs: list[subprocess.Popen] = []

    def _measure_arena(self) -> int | None:
        """The arena TFLite Micro's recording allocator reports after one inference (None if it says nothing).
        The inference also shows, before any image is scored, that every kernel runs."""
        with captured_stderr() as log:
            try:
                self._it.set_input(np.zeros(self.input.shape, self.input.dtype), 0)
                self._it.invoke()
            except RuntimeError as exc:
                said = log.read().strip().splitlines()
                reason = said[0][:200] if said else exc_reason(exc)
                raise DGHError(f"TFLite Micro cannot run '{self.path.name}' ({reason})", UNSUPPORTED_FIX) from exc
            self._it.print_allocations()
        m = _ARENA_TOTAL.search(log.text)
        return int(m.group(1)) if m else None

    def describe(self) -> dict[str, Any]:
        """What the report says about this runtime."""
        return {"runtime": self.name, "version": micro_version(), "arena_bytes": self.arena_bytes,
                "image_limit": self.image_limit}

    def infer(self, x: np.ndarray) -> list[np.ndarray]:
        x = file_input(x, self.input, self.path)
        workers = self._workers_for(len(x))
        if not workers:
            raw = run_on(self._it, self._positions, x)
        else:
            parts = np.array_split(x, len(workers))
            for worker, part in zip(workers, parts, strict=True):  # all start before any is read
                send(worker.stdin, [part])  # type: ignore[arg-type]
            results = [self._receive(worker) for worker in workers]
            raw = [np.concatenate([r[k] for r in results]) for k in range(len(self._positions))]
        return [torch_output(r, o, perm) for r, o, perm in zip(raw, self.outputs, self._perms, strict=True)]

    def _workers_for(self, n_images: int) -> list[subprocess.Popen]:
        """The worker processes for a batch of ``n_images`` (started at the first batch worth sharing)."""
        if self.workers < 2 or n_images < 2:
            return []
        if not self._procs:
            command = [sys.executable, "-m", "dgh_deploy.runtime.tflite_micro_worker", str(self.path), str(self._arena),
                       *map(str, self._positions)]
            self._procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=subprocess.DEVNULL) for _ in range(self.workers)]
            weakref.finalize(self, stop_workers, self._procs)
        return self._procs[: min(self.workers, n_images)]

    def _receive(self, worker: subprocess.Popen) -> list[np.ndarray]:
        try:
            return receive(worker.stdout, len(self._positions))  # type: ignore[arg-type]
        except EOFError:
            code = worker.wait()
            self.close()
            raise DGHError(f"a TFLite Micro worker stopped while running '{self.path.name}' (exit code {code})",
                           UNSUPPORTED_FIX) from None

    def close(self) -> None:
        """Stop the worker processes (they also stop when the runner is collected or the job exits)."""
        stop_workers(self._procs)
        self._procs = []


def stop_workers(procs: list[subprocess.Popen]) -> None:
    """Close each worker's input (it exits at the end of it) and wait a moment for it."""
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.stdin.close()  # type: ignore[union-attr]
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


# Opens the file and runs one inference on zeros, in a child process: TFLite Micro aborts the whole
# process (C++ abort, no exception) on some files, e.g. an op it cannot prepare.
_PROBE = """
import sys
import numpy as np
from tflite_micro.python.tflite_micro import runtime
it = runtime.Interpreter.from_file(sys.argv[1], arena_size=int(sys.argv[2]))
d = it.get_input_details(0)
it.set_input(np.zeros(d["shape"], d["dtype"]), 0)
it.invoke()
"""


def probe(path: Path, arena: int) -> None:
    """Raise DGHError if TFLite Micro crashes on ``path``, instead of taking the job down with it."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(path), str(arena)], capture_output=True, text=True,
                          timeout=600)
    if proc.returncode < 0:
        said = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith((" ", "Traceback"))]
        reason = said[-1][:200] if said else f"the interpreter aborted (signal {-proc.returncode})"
        collapsed = collapsed_ranges(path)
        if collapsed:
            name, scale = collapsed[0]
            more = f" (and {len(collapsed) - 1} after it)" if len(collapsed) > 1 else ""
            raise DGHError(f"TFLite Micro cannot run '{path.name}' ({reason}): the int8 tensor '{name[:80]}'{more} "
                           f"has a collapsed range (scale {scale:.1e}: every calibration value was the same)",
                           COLLAPSED_FIX)
        raise DGHError(f"TFLite Micro cannot run '{path.name}' ({reason})", UNSUPPORTED_FIX)


def collapsed_ranges(path: Path) -> list[tuple[str, float]]:
    """(name, scale) of every op output in ``path``, in graph order, whose per-tensor int8 scale is
    under :data:`COLLAPSED_SCALE`: the first is where the collapse starts."""
    it = open_interpreter(path, delegates=False)
    outputs = [i for op in it._get_ops_details() for i in op["outputs"] if i >= 0]  # the only op list LiteRT has
    found = []
    for index in dict.fromkeys(outputs):
        d = it._get_tensor_details(index, 0)
        scales = d["quantization_parameters"]["scales"]
        if len(scales) == 1 and 0 < scales[0] < COLLAPSED_SCALE:
            found.append((d["name"], float(scales[0])))
    return found


def _open(path: Path) -> tuple[Any, int]:
    """A TFLite Micro interpreter with an arena large enough (grown from 10x the file's size), and that size."""
    from tflite_micro.python.tflite_micro import runtime

    arena = max(1 << 20, 10 * path.stat().st_size)
    probe(path, ARENA_LIMIT)
    while True:
        with captured_stderr() as log:
            try:
                return runtime.Interpreter.from_file(str(path), arena_size=arena), arena
            except RuntimeError as exc:
                said = log.read().strip().splitlines()
                if arena < ARENA_LIMIT and any("allocate" in line for line in said):
                    arena *= 4
                    continue
                reason = said[0][:200] if said else exc_reason(exc)
        raise DGHError(f"TFLite Micro cannot run '{path.name}' ({reason})", UNSUPPORTED_FIX)




def micro_version() -> str:
    return installed_version("tflite-micro")
