"""report.json against its schema, report.md, the --max-drop gate, JUnit, and the generation cache."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dgh_deploy.cli import main
from dgh_deploy.reporting import validate_report
from dgh_deploy.reporting.report import Report


def deploy_args(assets: Path, r20: str, out: Path, tmp: Path, *extra: str) -> list[str]:
    return ["--target", "sim", "--model", "cifar_resnet20", "--weights", r20, "--calib", "noise",
            "--n-images", "32", "--holdout", "8", "--val-data", str(assets / "cifar10" / "test"),
            "--val-limit", "500", "--out", str(out), "--cache-dir", str(tmp / "cache"), "--quiet", *extra]


@pytest.fixture(scope="module")
def passing_run(assets: Path, r20_weights: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, Path]:
    tmp = tmp_path_factory.mktemp("pass")
    out, junit = tmp / "out", tmp / "junit.xml"
    code = main(deploy_args(assets, r20_weights, out, tmp, "--max-drop", "100", "--junit", str(junit)))
    return code, out, junit


def test_report_validates_and_has_pictures(passing_run: tuple[int, Path, Path]) -> None:
    code, out, _ = passing_run
    assert code == 0
    validate_report(json.loads((out / "report.json").read_text()))
    report = Report.read(out / "report.json")
    assert report.metrics.float_scores is not None and report.metrics.float_scores["images"] == 500
    assert report.gate is not None and report.gate.passed is True and report.gate.verdict.startswith("PASS")
    md = (out / "report.md").read_text()
    assert "| float (PyTorch) |" in md and "| quantized (sim) |" in md
    for picture in ("calibration_grid.png", "activation_ranges.png"):
        assert f"({picture})" in md
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_junit_parses(passing_run: tuple[int, Path, Path]) -> None:
    _, _, junit = passing_run
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0" and int(suite.get("tests", "0")) >= 2


def test_gate_fails_a_run_that_drops_too_much(assets: Path, r20_weights: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out, junit = tmp_path / "out", tmp_path / "junit.xml"
    code = main(deploy_args(assets, r20_weights, out, tmp_path, "--bits", "W4A4", "--max-drop", "0",
                            "--junit", str(junit)))
    err = capsys.readouterr().err
    assert code == 3
    assert "FAIL:" in err and "more than --max-drop 0" in err and "Traceback" not in err
    report = Report.read(out / "report.json")  # the evidence is kept
    assert report.gate is not None and report.gate.passed is False and (report.metrics.drop or 0.0) > 0
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"


def test_max_drop_needs_val_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--target", "sim", "--max-drop", "1", "--out", str(tmp_path / "o")])
    assert code == 2 and "pass --val-data" in capsys.readouterr().err


def test_second_target_reuses_the_cached_set(r20_weights: str, tmp_path: Path) -> None:
    import dgh_deploy

    common = {"model": "cifar_resnet20", "weights": r20_weights, "calib": "dgh", "n_images": 16, "holdout": 8,
              "iters": 3, "cache_dir": str(tmp_path / "cache"), "human_report": False}
    first = dgh_deploy.deploy(target="sim", out=str(tmp_path / "a"), **common).report
    second = dgh_deploy.deploy(target="sim", out=str(tmp_path / "b"), per_tensor=True, **common).report
    assert first.calibration.cached is False and second.calibration.cached is True
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    assert first.metrics.data_free and second.calibration.settings == first.calibration.settings
