"""The report.json schema (JSON Schema draft 2020-12), shipped as report.schema.json."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

REPORT_SCHEMA_VERSION = "1.1"
SCHEMA_PATH = Path(__file__).with_name("report.schema.json")


@cache
def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` if ``report`` does not follow the schema."""
    import jsonschema

    jsonschema.validate(report, load_schema())
