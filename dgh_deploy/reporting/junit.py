"""A JUnit XML verdict, so CI systems show the quality gate like a test."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from dgh_deploy.artifacts import atomic_path
from dgh_deploy.reporting.report import Report


def write_junit(path: str | Path, report: Report | None, max_drop: float | None,
                error: str | None = None) -> None:
    """One test case per check: each gate check (``report.gate.checks``), the data-free agreement, the
    conversion checks; or one error case when the job stopped (``error``)."""
    name = f"{report.model.name}-{report.target.name}" if report else "dgh-deploy"
    suite = ET.Element("testsuite", name="dgh-deploy", tests="0", failures="0", errors="0")
    cases: list[ET.Element] = []

    def case(case_name: str, failure: str | None = None, is_error: bool = False, text: str = "") -> None:
        el = ET.Element("testcase", classname=name, name=case_name)
        if failure is not None:
            ET.SubElement(el, "error" if is_error else "failure", message=failure).text = failure
        if text:
            ET.SubElement(el, "system-out").text = text
        cases.append(el)

    if error is not None:
        case("deploy", error, is_error=True)
    else:
        assert report is not None
        m = report.metrics
        for check in report.gate.checks if report.gate else []:  # --max-drop and the target's: one case each
            case(check.name, None if check.passed else check.verdict, text=check.verdict)
        if m.float_scores is not None and m.quantized is not None and max_drop is None:  # no gate: for the record
            metric = m.metric
            case("accuracy", text=f"{metric}: float {m.float_scores[metric]:.2f}, quantized {m.quantized[metric]:.2f}, "
                                  f"drop {m.drop:.2f}")
        if m.data_free is not None:
            case("data_free_agreement", text=", ".join(f"{k}={v}" for k, v in m.data_free.items()))
        case("conversion_checks", text=f"target {report.target.name}: parity and integer-only checks passed")
    for el in cases:
        suite.append(el)
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(el.find("failure") is not None for el in cases)))
    suite.set("errors", str(sum(el.find("error") is not None for el in cases)))
    tree = ET.ElementTree(ET.Element("testsuites"))
    tree.getroot().append(suite)
    with atomic_path(path) as tmp:
        tree.write(tmp, encoding="utf-8", xml_declaration=True)
