"""A target's own section of report.json, typed by the target, and where the reader finds its type.

The shared reporting never names a target, so it cannot import the types of their sections. A
target declares its section as a :class:`TargetSection` subclass; the package of targets registers
itself here as a source of those types (target name -> section type), and reading a report asks
the sources for the type of the target that wrote it. A target that declares none, or one no
source knows, is read back as the plain dict it wrote.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, Self

Facts = dict[str, Any]  # a section as JSON: what an untyped target writes and reads back
SectionSource = Callable[[], Mapping[str, type["TargetSection"]]]

_SOURCES: list[SectionSource] = []


class TargetSection(ABC):
    """The keys a target writes beside its name, runtime and constraints; they write and read back
    exactly the JSON they stand for (key order and omitted keys included)."""

    @abstractmethod
    def to_json(self) -> Facts:
        """The section's keys, in the order report.json shows them."""

    @classmethod
    @abstractmethod
    def from_json(cls, d: Facts) -> Self:
        """The section from its keys in a written report (the target object less name, runtime, constraints)."""

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """JSON-schema properties of the keys that need checking (the target's report_schema)."""
        return {}

    def output_layout(self) -> str:
        """How the deployed file lays out its outputs (:data:`dgh_deploy.tasks.ultralytics_format.LAYOUTS`):
        the shared job scores and describes the file by it."""
        return "split"


def register_section_source(source: SectionSource) -> None:
    """Let ``source`` tell readers the section type of each target it knows (called once per source)."""
    if source not in _SOURCES:
        _SOURCES.append(source)


def section_type(target: str) -> type[TargetSection] | None:
    """The section type the target called ``target`` declares, or None (its section stays a dict)."""
    for source in _SOURCES:
        found = source().get(target)
        if found is not None:
            return found
    return None


def written(pairs: list[tuple[str, Any]]) -> Facts:
    """The JSON object of ``pairs``, leaving out the optional ones that are None."""
    return {key: value for key, value in pairs if value is not None}


def section_json(facts: TargetSection | Facts) -> Facts:
    return facts.to_json() if isinstance(facts, TargetSection) else dict(facts)


def read_section(target: str, d: Facts) -> TargetSection | Facts:
    """``target``'s section from its keys: its declared type, else the dict as written."""
    kind = section_type(target)
    return kind.from_json(d) if kind is not None else dict(d)


def output_layout(facts: TargetSection | Facts) -> str:
    """The deployed file's output layout, from a typed section or an untyped one's ``layout`` key."""
    return facts.output_layout() if isinstance(facts, TargetSection) else str(facts.get("layout", "split"))
