"""Hardware targets, one folder (subpackage) each.

A target folder defines a :class:`~dgh_deploy.targets.base.Target` subclass and exposes it as
``TARGET`` in its ``__init__``; everything the target needs of its own (calibrator, converter,
structural checks) lives in that folder. The class's ``name`` is what users type
(``--target tflite-int8``). Adding a target means adding one folder here; nothing else changes.
What every target shares is in :mod:`.base`. Heavy converter imports happen inside ``build``,
never at import time.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from dgh_deploy.errors import DGHError
from dgh_deploy.reporting.section import TargetSection, register_section_source
from dgh_deploy.targets.base import BuildResult, Calibrator, QuantConstraints, Target, TargetFlag, TargetOptions

DEFAULT_TARGET = "tflite-int8"  # what the job builds when --target is not given

__all__ = [
    "DEFAULT_TARGET", "BuildResult", "Calibrator", "QuantConstraints", "Target", "TargetFlag", "TargetOptions",
    "all_targets", "get_target", "section_types",
]


def all_targets() -> dict[str, type[Target]]:
    found: dict[str, type[Target]] = {}
    for info in pkgutil.iter_modules(__path__):
        if not info.ispkg:  # modules beside the folders (base.py) are shared, not targets
            continue
        target = getattr(importlib.import_module(f"{__name__}.{info.name}"), "TARGET", None)
        if target is not None:
            found[target.name] = target
    return dict(sorted(found.items()))


def section_types() -> dict[str, type[TargetSection]]:
    """Each target's declared report section type, by target name (those that declare one)."""
    return {name: cls.section for name, cls in all_targets().items() if cls.section is not None}


# A report read back gets each known target's section typed: reporting asks this registry, never a target.
register_section_source(section_types)


def get_target(name: str, **settings: Any) -> Target:
    """The target ``name``, with its own typed settings (keywords of its constructor)."""
    targets = all_targets()
    if name not in targets:
        known = ", ".join(targets) or "none installed"
        raise DGHError(f"unknown target '{name}'", f"use one of: {known} ('dgh-deploy targets' lists them)")
    cls = targets[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "options")]
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) or "no settings of its own"
        raise DGHError(f"target '{name}' has no setting '{unknown[0]}'", f"it takes: {takes}")
    return cls(**settings)
