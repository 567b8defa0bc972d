"""Quiet converters: their console output goes to a log file, which then feeds the error messages.

onnx2tf prints hundreds of lines and TensorFlow's C++ code more on fd 2; litert-torch prints a
progress tree and ai-edge-quantizer a progress bar and a report. A job's console shows our own
lines only, unless verbose.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def capture_output(log_path: Path, enabled: bool = True) -> Iterator[None]:
    """Send Python's and C++'s stdout/stderr to ``log_path`` (fd level: native code writes to fds 1 and 2)."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    console = sys.stderr
    saved = [os.dup(1), os.dup(2)]
    with open(log_path, "a", buffering=1, errors="replace") as log:
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            log.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            _unhook_handlers(log, console)


def _unhook_handlers(captured: object, stream: object) -> None:
    """Point logging handlers made during the capture back at the console. A library imported
    inside it (TensorFlow's absl, a converter's basicConfig) may have bound a handler to the
    redirected ``sys.stderr``, i.e. the log file we just closed: the next warning of a later job
    in the same process would fail with 'I/O operation on closed file'."""
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is captured:
                handler.setStream(stream)  # type: ignore[arg-type]
