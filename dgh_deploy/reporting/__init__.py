"""What a run leaves for people and CI: report.json (versioned schema), a Markdown report with
pictures, and a JUnit verdict."""

from dgh_deploy.reporting.human import write_human_report
from dgh_deploy.reporting.junit import write_junit
from dgh_deploy.reporting.report import REPORT_SCHEMA_VERSION
from dgh_deploy.reporting.schema import load_schema, validate_report

__all__ = ["REPORT_SCHEMA_VERSION", "load_schema", "validate_report", "write_human_report", "write_junit"]
