"""What native code writes to file descriptor 2: captured, so that a runtime's C++ notices stay
off the job's console (and feed its error messages) unless ``--verbose``."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import IO


class Captured:
    """Text a block wrote to file descriptor 2: ``text`` so far, all of it once the block is left."""

    def __init__(self, file: IO[str]) -> None:
        self._file = file
        self.text = ""

    def read(self) -> str:
        self._file.seek(0)
        self.text = self._file.read()
        return self.text


@contextlib.contextmanager
def captured_stderr() -> Iterator[Captured]:
    """Capture what native code writes to file descriptor 2 inside the block (TFLite Micro's C++ diagnostics)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+") as file:
        captured = Captured(file)
        os.dup2(file.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.read()


@contextlib.contextmanager
def quiet_native_stderr(enabled: bool = True) -> Iterator[None]:
    """Drop what native code writes to fd 2 inside the block (LiteRT's "Created TensorFlow Lite
    XNNPACK delegate for CPU." at each interpreter), unless ``enabled`` is False; a Python
    exception leaving the block still reaches the caller."""
    if not enabled:
        yield
        return
    with captured_stderr():
        yield
