"""Shared fixtures. Tests that need real models/images use ``assets`` and skip without them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from cxx import cxx_compiler

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("DGH_ASSETS", REPO.parent / "shared" / "assets"))

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def assets() -> Path:
    if not ASSETS.is_dir():
        pytest.skip(f"real models and images not found at {ASSETS} (set DGH_ASSETS or clone beside ../shared)")
    return ASSETS


@pytest.fixture(scope="session")
def cxx() -> str:
    """The C++ compiler the compiled BN kernels need; the test skips without one."""
    if (found := cxx_compiler()) is None:
        pytest.skip("no C++ compiler (g++, clang++ or $CXX): the BN kernels run eagerly here")
    return found


@pytest.fixture(scope="session")
def r20_weights(assets: Path) -> str:
    return str(assets / "cifar10" / "resnet20-12fca82f.th")


@pytest.fixture(scope="session")
def r56_weights(assets: Path) -> str:
    return str(assets / "cifar10" / "resnet56-4bfd9763.th")
