"""Installed package versions, from package metadata (no import: some packages need a GPU to import)."""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Iterable


def installed_version(package: str, missing: str = "unknown") -> str:
    """``package``'s installed version, or ``missing`` when it is not installed."""
    try:
        return md.version(package)
    except md.PackageNotFoundError:
        return missing


def installed_versions(packages: Iterable[str]) -> dict[str, str]:
    """package -> version for those of ``packages`` that are installed."""
    return {p: v for p in packages if (v := installed_version(p, "")) != ""}
