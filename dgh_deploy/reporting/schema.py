"""The report.json schema (JSON Schema draft 2020-12): report.schema.json, with each target's own
section merged in from the target (:meth:`~dgh_deploy.targets.Target.report_schema`)."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


@cache
def load_schema() -> dict[str, Any]:
    """The whole schema: the shared part and every registered target's section."""
    from dgh_deploy.targets import all_targets

    schema = copy.deepcopy(json.loads(SCHEMA_PATH.read_text()))
    target_properties = schema["properties"]["target"]["properties"]
    for cls in all_targets().values():
        target_properties.update(cls.report_schema())
    return schema


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` if ``report`` (report.json's content) does not follow the schema."""
    import jsonschema

    jsonschema.validate(report, load_schema())
