"""Hardware targets, one plugin module each.

A target module defines a :class:`~dgh_deploy.targets.base.Target` subclass and exposes it as
``TARGET``. The module name with ``_`` as ``-`` is not required to match: the class's ``name``
is what users type (``--target tflite-int8``). Adding a target means adding one module here;
nothing else changes. Heavy converter imports happen inside ``build``, never at import time.
"""

from __future__ import annotations

import importlib
import pkgutil

from dgh_deploy.errors import DGHError
from dgh_deploy.targets.base import BuildResult, QuantConstraints, Target, TargetOptions

__all__ = ["BuildResult", "QuantConstraints", "Target", "TargetOptions", "all_targets", "get_target"]


def all_targets() -> dict[str, type[Target]]:
    found: dict[str, type[Target]] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_") or info.name == "base":  # "_x" modules are a target's helpers
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        target = getattr(mod, "TARGET", None)
        if target is not None:
            found[target.name] = target
    return dict(sorted(found.items()))


def get_target(name: str) -> Target:
    targets = all_targets()
    if name not in targets:
        known = ", ".join(targets) or "none installed"
        raise DGHError(f"unknown target '{name}'", f"use one of: {known} ('dgh-deploy targets' lists them)")
    return targets[name]()
