"""bench/ is importable and runnable both ways, without sys.path edits (fast: nothing heavy runs)."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").is_file() else sys.executable
# Every bench script (and the two shared modules, which are scripts too).
LIBRARIES = ("tiny_models",)  # imported by the scripts, not run
# Every module under bench/ but the libraries: a new script is held to the same rules unasked.
SCRIPTS = tuple(sorted(p.stem for p in BENCH.glob("*.py") if p.stem != "__init__" and p.stem not in LIBRARIES))


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, *args], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.mark.parametrize("name", SCRIPTS)
def test_module_has_main(name: str) -> None:
    module = importlib.import_module(f"bench.{name}")
    assert callable(module.main)
    assert list(inspect.signature(module.main).parameters) == ["argv"]
    assert 'if __name__ == "__main__":\n    sys.exit(main())' in (BENCH / f"{name}.py").read_text()


def test_import_does_no_work() -> None:
    """Importing every bench module runs nothing heavy: torch is not even imported."""
    code = "; ".join(f"import bench.{n}" for n in SCRIPTS) + "; import sys; print('torch' in sys.modules)"
    proc = run("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_help_both_ways() -> None:
    """``python bench/NAME.py --help`` and ``python -m bench.NAME --help`` from the repo root, all at once."""
    commands = [(f"bench/{n}.py", "--help") for n in SCRIPTS] + [("-m", f"bench.{n}", "--help") for n in SCRIPTS]
    with ThreadPoolExecutor(max_workers=min(len(commands), (os.cpu_count() or 2) * 2)) as pool:
        results = list(pool.map(lambda c: (c, run(*c)), commands))
    for command, proc in results:
        assert proc.returncode == 0, f"{' '.join(command)}: {proc.stderr}"
        assert "usage: python -m bench." in proc.stdout, command


def test_no_sys_path_edits() -> None:
    """No file under bench/ edits sys.path, except generation.py's user option --mct-path."""
    found = []
    for path in sorted(p for p in BENCH.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        text = path.read_text(errors="replace")
        found += [(path.relative_to(REPO).as_posix(), line.strip()) for line in text.splitlines()
                  if "sys.path.append" in line or "sys.path.insert" in line]
    assert found == [("bench/generation.py", "sys.path.insert(0, mct_path)")]
    source = inspect.getsource(importlib.import_module("bench.generation").add_mct_path)
    assert "--mct-path" in source and "user option" in source


def test_no_private_imports_across_modules() -> None:
    """No bench module imports a leading-underscore module or name from another."""
    pattern = re.compile(r"^\s*(from bench\.\w+ import .*\b_\w+|from bench\._|import bench\._|from bench import _)",
                         re.MULTILINE)
    for name in SCRIPTS:
        assert not pattern.search((BENCH / f"{name}.py").read_text()), name


def test_asset_defaults_follow_assets_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import common

    ap = common.BenchParser("x", None)
    ap.add_model()
    ap.add_asset_argument("--val-data", common.CIFAR_TEST)
    args = ap.parse(["--assets", str(tmp_path)])
    assert args.weights == str(tmp_path / common.R20_WEIGHTS)
    assert args.val_data == str(tmp_path / "cifar10" / "test")
    assert ap.parse(["--val-data", "elsewhere"]).val_data == "elsewhere"
    monkeypatch.setenv("DGH_ASSETS", str(tmp_path / "env"))
    assert ap.parse([]).weights == str(tmp_path / "env" / common.R20_WEIGHTS)
    monkeypatch.delenv("DGH_ASSETS")
    assert ap.parse([]).assets == REPO.parent / "shared" / "assets"


@pytest.mark.parametrize("argv", [
    ["bench/ablation.py", "--assets", "/nonexistent/assets"],
    ["-m", "bench.compare", "--assets", "/nonexistent/assets", "--state", "/nonexistent/state.json"],
    ["-m", "bench.detect_picks", "--assets", "/nonexistent/assets"],
    ["-m", "bench.seeds", "--assets", "/nonexistent/assets", "--sets", "/nonexistent/sets"],
    ["-m", "bench.generation", "--weights", "/nonexistent/w.th", "--skip-mct"],
])
def test_missing_asset_is_one_line_and_exit_2(argv: list[str]) -> None:
    proc = run(*argv)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing asset" in lines[0] and "/nonexistent/" in lines[0], proc.stderr
    assert lines[0].startswith("bench.")


def test_write_result_keeps_format(tmp_path: Path) -> None:
    import numpy as np

    from bench import common

    data = {"a": np.float32(1.5), "b": [1, 2], "p": Path("x")}
    common.write_result(tmp_path / "r.json", data, indent=1)
    text = (tmp_path / "r.json").read_text()
    assert text == json.dumps({"a": 1.5, "b": [1, 2], "p": "x"}, indent=1) + "\n"
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left


def test_a_stopped_bench_keeps_every_build_it_finished(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench import common

    path = tmp_path / "state.json"
    state: dict = {"builds": {"minmax|dgh|0|0": 1.0}}

    def build(method: str, source: str, seed: int, pick: int) -> float:
        if pick == 2:
            raise KeyboardInterrupt  # the user stops the bench during its third build
        return 10.0 + pick

    todo = [("mse", "dgh", 0, 0), ("mse", "dgh", 0, 1), ("mse", "dgh", 0, 2)]
    with pytest.raises(KeyboardInterrupt):
        common.run_pending(path, state, "builds", todo, build, "{:.1f}".format, common.pick_label)
    assert json.loads(path.read_text())["builds"] == {"minmax|dgh|0|0": 1.0, "mse|dgh|0|0": 10.0, "mse|dgh|0|1": 11.0}
    lines = capsys.readouterr().out.splitlines()
    assert [re.sub(r" \(\d+ s\)$", "", line) for line in lines] == ["[1/3] mse dgh seed 0 pick 0: 10.0",
                                                                    "[2/3] mse dgh seed 0 pick 1: 11.0"]


def test_machine_line() -> None:
    from bench import common

    assert re.fullmatch(r"\d+-core CPU \(.+\), Python 3\.\d+\.\d+", common.machine())


def test_seeds_makes_a_set_per_schedule_for_generated_sources_only() -> None:
    """bench/seeds.py --scales: a generated source gets one set per schedule (full size keeps its plain
    label, so earlier sets stay valid); noise and real images have no schedule."""
    from bench.seeds import label, runs

    made = runs(["dgh", "noise"], ["fp32"], ["1", "0.5:0.6,1:0.4"])
    assert [label(*r) for r in made] == ["dgh", "dgh@0.5:0.6,1:0.4", "noise"]
    assert [label(*r) for r in runs(["dgh"], ["fp32", "bf16"])] == ["dgh", "dgh-bf16"]


def test_whole_process_variant_splits_environment_from_options(tmp_path: Path) -> None:
    """bench/whole_process.py --variants: NAME=value words go to the environment ({fresh}: a new empty
    folder each time, a first run on a machine), the rest to the command line."""
    from bench.whole_process import split_variant

    env, options = split_variant("TORCHINDUCTOR_CACHE_DIR={fresh} TORCHDYNAMO_DISABLE=1 --precision fp32", tmp_path)
    assert options == "--precision fp32" and env["TORCHDYNAMO_DISABLE"] == "1"
    fresh = Path(env["TORCHINDUCTOR_CACHE_DIR"])
    assert fresh.is_dir() and fresh.parent == tmp_path and not any(fresh.iterdir())
    assert split_variant("TORCHINDUCTOR_CACHE_DIR={fresh}", tmp_path)[0]["TORCHINDUCTOR_CACHE_DIR"] != str(fresh)
    assert split_variant("--scales 0.5:0.4,1:0.6", tmp_path) == ({}, "--scales 0.5:0.4,1:0.6")


def test_a_detector_bench_keeps_the_layout_its_results_file_was_built_with() -> None:
    """bench/tflite_ranges.py and bench/int16_repair.py: maps by default; a file with builds continues only in
    its own layout (a file from before the maps layout records none: it was split)."""
    from bench.tflite_ranges import checked_layout

    assert checked_layout({}, {}, "", "r.json") == "maps"
    assert checked_layout({}, {}, "split", "r.json") == "split"
    assert checked_layout({"layout": "maps"}, {"a": 1.0}, "", "r.json") == "maps"
    assert checked_layout({}, {"a": 1.0}, "split", "r.json") == "split"
    with pytest.raises(SystemExit, match="pass --layout split or another --json"):
        checked_layout({}, {"a": 1.0}, "", "r.json")
