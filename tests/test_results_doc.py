"""bench/results_doc.py: docs/results.md and the README's results block are what bench/results/ gives."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "results_doc.py"


def results_doc() -> ModuleType:
    """The script as a module, loaded from its file (works whether or not ``bench`` is installed)."""
    spec = importlib.util.spec_from_file_location("results_doc_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_and_readme_match_the_result_files(capsys) -> None:
    code = results_doc().main(["--check"])
    assert code == 0, f"{capsys.readouterr().err}run: python bench/results_doc.py"


def test_script_runs_alone_on_the_standard_library() -> None:
    code = (
        "import json, runpy, sys\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--check']\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "    rc = 0\n"
        "except SystemExit as exc:\n"
        "    rc = exc.code\n"
        "print(json.dumps([rc, sorted(m for m in ('numpy', 'torch', 'dgh_deploy', 'yaml') if m in sys.modules)]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [0, []], out.stderr


def test_runs_as_a_module() -> None:
    out = subprocess.run([sys.executable, "-m", "bench.results_doc", "--check"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_compare_table_from_a_tiny_state() -> None:
    state = {
        "machine": "a test machine",
        "cells": {
            "m|dgh|tflite-int8": {"float": 80.0, "quantized": 79.5, "drop": 0.5, "metric": "top1"},
            "m|real|tflite-int8": {"float": 80.0, "quantized": 80.25, "drop": -0.25, "metric": "top1"},
            "m|dgh|sim:W4A8": {"error": "it broke"},
        },
    }
    [(title, (header, rows))] = results_doc().compare_tables(state)
    assert title == "**m**: top1, float 80.00"
    assert header == ["calibration", "tflite-int8"]  # a target with only failed cells has no column
    assert rows == [["dgh", "79.50 (-0.50)"], ["real", "80.25 (+0.25)"]]


def test_picks_table_from_a_tiny_state() -> None:
    jobs = {"t|dgh|0|0": 27.0, "t|dgh|0|1": 28.0, "t|dgh|1|0": 29.0, "t|real|0|0": 26.0}
    [(title, (_, rows))] = results_doc().picks_tables({"jobs": jobs})
    assert title == "**t**"
    assert rows[0] == ["dgh", "27.00, 28.00; 29.00", "28.00 (3)", "27.00 to 29.00", "+2.00"]
    assert rows[1][0] == "real" and rows[1][-1] == "-"


def test_classify_picks_table_from_a_tiny_state() -> None:
    def build(top1: float, sqnr: float) -> dict[str, float]:
        return {"top1_agreement": top1, "output_sqnr_db": sqnr}

    builds = {"minmax|dgh|0|0": build(90.0, 18.0), "minmax|dgh|0|1": build(92.0, 18.2),
              "minmax|dgh|1|0": build(94.0, 18.4), "minmax|real|0|0": build(91.0, 18.1),
              "mse|dgh|0|0": build(93.0, 19.0)}
    header, rows = results_doc().classify_picks_table({"builds": builds})
    assert header[-1] == "mean minus real"
    assert rows[0] == ["minmax", "dgh", "90.00, 92.00; 94.00", "92.00 (3)", "90.00 .. 94.00", "18.20", "+1.00"]
    assert rows[1][:2] == ["minmax", "real"] and rows[1][-1] == "+0.00"
    assert rows[2][:2] == ["mse", "dgh"] and rows[2][-1] == "-"  # no real build of that method


def test_check_fails_on_a_stale_page_and_names_the_machine(tmp_path: Path, capsys) -> None:
    mod = results_doc()
    results = tmp_path / "results"
    results.mkdir()
    (results / "sim_rounding_r20_cpu.json").write_text(json.dumps({"W4A8/gptq/dgh": 80.0, "W4A8/nearest/dgh": 77.0}))
    (results / "mystery_h100.json").write_text(json.dumps({"rate": 1.5, "runs": [{"n": 2}]}))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{mod.BEGIN}\nold figures\n{mod.END}\nrest\n")
    doc = tmp_path / "docs" / "results.md"
    args = ["--results", str(results), "--doc", str(doc), "--readme", str(readme)]

    assert mod.main(["--check", *args]) == 1  # nothing written yet
    assert mod.main(args) == 0
    assert mod.main(["--check", *args]) == 0
    text = doc.read_text()
    assert "| cifar_resnet20 | W4A8 | gptq (default) | 80.00 |" in text
    assert "the 2-core CPU (named from the file name: the file records no machine)" in text
    assert "## Other result files" in text and "the H100 (named from the file name" in text
    assert "| `runs[0].n` | 2 |" in text
    assert "old figures" not in readme.read_text() and readme.read_text().endswith("rest\n")

    doc.write_text(text.replace("80.00", "81.00"))
    capsys.readouterr()
    assert mod.main(["--check", *args]) == 1
    assert "results.md" in capsys.readouterr().err

    readme.write_text("no markers\n")
    assert mod.main(args) == 2
