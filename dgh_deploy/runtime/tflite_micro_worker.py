"""A TFLite Micro interpreter in a worker process: the reference kernels are single-threaded and
slow (YOLOv5n at 320: about 1 s an image), so the runner shares a batch's images among as many
processes as there are cores.

A worker is ``python -m dgh_deploy.runtime.tflite_micro_worker FILE ARENA POSITION...``: it reads
batches from stdin and writes their outputs to stdout, as .npy records. A plain child process, not
multiprocessing's: spawn and forkserver re-import the caller's main script, which a user's script
without a ``__main__`` guard would run again. It imports numpy and tflite-micro only.
"""

from __future__ import annotations

import io
import sys
from typing import IO, Any

import numpy as np


def run_on(interpreter: Any, positions: list[int], x: np.ndarray) -> list[np.ndarray]:
    """The raw outputs of ``x`` (file-typed, one image at a time), stacked per output position."""
    results: list[list[np.ndarray]] = [[] for _ in positions]
    for i in range(len(x)):
        interpreter.set_input(x[i : i + 1], 0)
        interpreter.invoke()
        for k, position in enumerate(positions):
            results[k].append(np.array(interpreter.get_output(position)))
    return [np.concatenate(chunks) for chunks in results]


def send(stream: IO[bytes], arrays: list[np.ndarray]) -> None:
    """Each array as its length (8 bytes) and its .npy bytes: numpy's own file I/O needs a seekable file."""
    for a in arrays:
        buffer = io.BytesIO()
        np.save(buffer, a, allow_pickle=False)
        stream.write(len(buffer.getbuffer()).to_bytes(8, "little") + buffer.getbuffer())
    stream.flush()


def receive(stream: IO[bytes], count: int) -> list[np.ndarray]:
    """``count`` arrays from ``stream``; EOFError when the other side has gone."""
    return [np.load(io.BytesIO(_read(stream, int.from_bytes(_read(stream, 8), "little"))), allow_pickle=False)
            for _ in range(count)]


def _read(stream: IO[bytes], n: int) -> bytes:
    data = stream.read(n)
    if len(data) < n:
        raise EOFError("the stream ended")
    return data


def main(argv: list[str]) -> int:
    from tflite_micro.python.tflite_micro import runtime

    path, arena, positions = argv[0], int(argv[1]), [int(p) for p in argv[2:]]
    interpreter = runtime.Interpreter.from_file(path, arena_size=arena)
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            (x,) = receive(source, 1)
        except EOFError:  # the runner closed the pipe: done
            return 0
        send(sink, run_on(interpreter, positions, x))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
