"""Runners: one per runtime, one interface (as in Polygraphy). Heavy imports stay inside each runner.

The package itself imports nothing heavy, so that a runner's worker processes
(:mod:`.tflite_micro_worker`) start without PyTorch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dgh_deploy.runtime.base import Runner, TorchRunner

__all__ = ["Runner", "TorchRunner"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from dgh_deploy.runtime import base

        return getattr(base, name)
    raise AttributeError(f"module 'dgh_deploy.runtime' has no attribute '{name}'")
