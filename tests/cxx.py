"""Whether this machine has the C++ compiler inductor builds the compiled BN kernels with: without
one they run eagerly (one warning), so tests of the compiled loops skip."""

from __future__ import annotations

import os
import shutil


def cxx_compiler() -> str | None:
    """``$CXX``, else the first of g++, clang++, c++ on the PATH (where inductor looks)."""
    found = [os.environ.get("CXX")] + [shutil.which(name) for name in ("g++", "clang++", "c++")]
    return next((c for c in found if c), None)
