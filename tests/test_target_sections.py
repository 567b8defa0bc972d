"""Each target's typed section of report.json reads back what it wrote and writes it again, key for key."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dgh_deploy.reporting import load_schema
from dgh_deploy.reporting.report import TargetEntry
from dgh_deploy.reporting.section import TargetSection
from dgh_deploy.targets import all_targets, section_types

GOLDEN = Path(__file__).parent / "data" / "reports"


def golden_target(name: str) -> dict[str, Any]:
    """report.json's ``target`` object of a golden job (tests/data/reports)."""
    return json.loads((GOLDEN / f"{name}.json").read_text())["target"]


def after(d: dict[str, Any], key: str, added: dict[str, Any]) -> dict[str, Any]:
    """``d`` with ``added`` written right after ``key``, where a build adds them."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        out[k] = v
        if k == key:
            out.update(added)
    return out


def variants() -> dict[str, dict[str, Any]]:
    """The goldens, and what they leave out: the other layout, a run that failed, keys a build adds on the way."""
    found = {path.stem: golden_target(path.stem) for path in sorted(GOLDEN.glob("*.json"))}
    lite = {k: v for k, v in found["demo_tflite-int8"].items() if k not in ("export_rewrites", "act_range_default")}
    lite = after({**lite, "layout": "ultralytics", "tflite_micro": {"skipped": "--layout ultralytics"}}, "layout",
                 {"ultralytics": {"file": "m_ultralytics_int8.tflite", "max_deviation_steps": 0.0}})
    found["tflite_ultralytics_from_onnx"] = lite
    found["tflite_micro_error"] = {**found["demo_tflite-int8"], "tflite_micro": {"error": "no arena"}}
    ethos = copy.deepcopy(found["demo_ethos-u"])
    npu = ethos["ethos_u"]
    npu["cpu_ops"] = 1
    npu["npu_op_share"] = round(100.0 * npu["npu_ops"] / (npu["npu_ops"] + 1), 2)  # as Vela's report works it out
    npu["cpu_fallback"] = [{"op": "LOG_SOFTMAX", "name": "x:0", "reason": "Unsupported", "constraint": ""}]
    found["ethos_u_fallback"] = ethos
    trt = after({**found["yolov5n_tensorrt-int8"], "layout": "ultralytics"}, "layout",
                {"ultralytics": {"file": "model_qdq_ultralytics.onnx", "max_abs_deviation": 0.0}})
    found["tensorrt_engine_error_ultralytics"] = after(trt, "weights", {"engine_error": "no GPU"})
    return found


@pytest.mark.parametrize(("name", "target"), list(variants().items()), ids=list(variants()))
def test_a_section_reads_back_typed_and_writes_the_same_json(name: str, target: dict[str, Any]) -> None:
    entry = TargetEntry.from_json(target)
    declared = all_targets()[target["name"]].section
    assert declared is not None and type(entry.facts) is declared
    assert json.dumps(entry.to_json()) == json.dumps(target)  # the same keys, values and order
    assert TargetEntry.from_json(entry.to_json()) == entry
    jsonschema.validate(target, load_schema()["properties"]["target"])


def test_a_target_without_a_section_type_reads_back_a_dict() -> None:
    target = {"name": "no-such-target", "runtime": "r", "constraints": {}, "b": 1, "a": {"c": None}}
    entry = TargetEntry.from_json(target)
    assert entry.facts == {"b": 1, "a": {"c": None}} and not isinstance(entry.facts, TargetSection)
    assert json.dumps(entry.to_json()) == json.dumps(target)


def test_each_target_s_schema_is_its_section_s() -> None:
    """report_schema() comes from the section type, and names only keys the section writes."""
    written = {t["name"]: set(t) for t in variants().values()}
    assert set(section_types()) == set(all_targets())
    for name, cls in all_targets().items():
        assert cls.section is not None and cls.report_schema() == cls.section.json_schema()
        assert set(cls.report_schema()) <= written[name]
