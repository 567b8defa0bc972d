"""Atomic artifact writing: a reader never sees a half-written file or output folder.

Three failures must leave the disk as it was: an exception (a failed check), a full disk, and an
interrupt (Ctrl-C or SIGTERM). Files are written beside their final name and renamed into place;
a job's output folder is staged beside ``--out`` and swapped in with renames, while interrupts
wait, so ``--out`` holds either the previous complete result or the new one.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dgh_deploy.errors import DGHError

RESULT_MARKER = "report.json"  # a folder holding this is a dgh-deploy result we may replace whole
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def write_error(exc: OSError, path: str | Path) -> DGHError:
    """One line for a failed write: what, where, and the fix."""
    if exc.errno in _DISK_FULL:
        return DGHError(f"no space left on the device while writing '{path}'",
                        "free some disk space, or write to another disk (--out, --cache-dir)")
    reason = exc.strerror or type(exc).__name__
    return DGHError(f"cannot write '{path}' ({reason})", "pick a folder you can write to")


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it into place only if the block succeeds.

    An ``OSError`` from the block or the rename (disk full, permissions) becomes a one-line
    :class:`DGHError`; the temporary file never survives.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(exc, final) from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; artifacts are shared files, so give them the usual umask mode.
        mask = os.umask(0)
        os.umask(mask)
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~mask)
        os.replace(tmp_path, final)
    except OSError as exc:
        raise write_error(exc, final) from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def check_output_folder(out_dir: str | Path) -> None:
    """Refuse an ``--out`` the job could not replace safely: a file, or a folder of someone else's files."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DGHError(f"--out '{out}' is a file, not a folder", "pass a new or empty folder, or a previous result")
    if out.is_dir() and any(out.iterdir()) and not (out / RESULT_MARKER).is_file():
        raise DGHError(f"--out '{out}' holds files that are not a dgh-deploy result",
                       "pass a new or empty folder (or a previous result, which is replaced whole)")


@contextmanager
def staging_dir(out_dir: str | Path) -> Iterator[Path]:
    """A scratch folder for a whole job's artifacts, swapped in as ``out_dir`` only on success.

    The previous result (if any) is replaced whole; on failure or interrupt ``out_dir`` is left
    exactly as it was.
    """
    out = Path(out_dir)
    check_output_folder(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".staging", dir=out.parent))
    except OSError as exc:
        raise write_error(exc, out) from exc
    try:
        yield stage
        with deferred_interrupts():
            _swap_in(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _swap_in(stage: Path, out: Path) -> None:
    """Two renames: the old result aside, the new one in. Between them ``out`` is absent, never mixed."""
    old = out.with_name(f".{out.name}.previous")
    shutil.rmtree(old, ignore_errors=True)
    try:
        if out.exists():
            os.replace(out, old)
        os.replace(stage, out)
    except OSError as exc:
        if old.exists() and not out.exists():
            os.replace(old, out)
        raise write_error(exc, out) from exc
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block is done (a few renames), then deliver them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, _f: caught.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in caught[:1]:
            os.kill(os.getpid(), sig)
