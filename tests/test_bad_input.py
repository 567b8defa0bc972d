"""The bad-input corpus: every case fails in seconds, before generation, with one line and nothing on disk.

Each case runs the CLI in-process with generation patched to fail if reached, and asserts the exit
code, a single line on stderr naming the problem, no traceback, an untouched ``--out`` and the
time it took. The inputs are built in ``tmp_path`` (no assets needed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import dgh_deploy
from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.cli import main
from dgh_deploy.errors import DGHError
from dgh_deploy.models import DEMO_WEIGHTS

SECONDS = 15.0  # a bad input is found while loading (the demo loads in about one second)
FACTORY = """
import torch
from torch import nn

def vector_model():
    return nn.Linear(4, 2)  # not an image model

def not_a_module():
    return 42

def broken():
    raise RuntimeError("boom")
"""


@pytest.fixture
def no_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reaching generation is a failure of the case: bad input must be found before it."""
    import dgh_deploy.generation

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("generation started before the bad input was found")

    monkeypatch.setattr(dgh_deploy.generation, "make_calibration_set", refuse)


def files(tmp: Path) -> dict[str, str]:
    """Bad (and good) inputs, made once per test in ``tmp``."""
    made = {}
    (tmp / "garbage.bin").write_bytes(b"\x00 not a checkpoint \xff" * 10)
    made["garbage"] = str(tmp / "garbage.bin")
    (tmp / "garbage.pt").write_bytes(b"garbage")
    made["garbage_pt"] = str(tmp / "garbage.pt")
    data = DEMO_WEIGHTS.read_bytes()
    (tmp / "truncated.pt").write_bytes(data[: len(data) // 3])
    made["truncated"] = str(tmp / "truncated.pt")
    state = torch.load(DEMO_WEIGHTS, weights_only=True)["state_dict"]
    state["linear.weight"][0, 0] = float("nan")
    torch.save(state, tmp / "nan.pt")
    made["nan_weights"] = str(tmp / "nan.pt")
    torch.save({"conv1.weight": torch.zeros(3)}, tmp / "wrong_arch.pt")
    made["wrong_arch"] = str(tmp / "wrong_arch.pt")
    torch.save({"note": "no tensors here"}, tmp / "no_state.pt")
    made["no_state"] = str(tmp / "no_state.pt")
    (tmp / "factory.py").write_text(FACTORY)
    made["factory"] = str(tmp / "factory.py")
    (tmp / "calib.npz").write_bytes(b"PK\x03\x04 truncated zip")
    made["corrupt_npz"] = str(tmp / "calib.npz")
    CalibrationSet(np.zeros((4, 3, 16, 16), np.float32), "noise").save(tmp / "small.npz")
    made["wrong_size_npz"] = str(tmp / "small.npz")
    nan = np.zeros((4, 3, 32, 32), np.float32)
    nan[1, 0, 0, 0] = np.nan
    CalibrationSet(nan, "noise").save(tmp / "nan.npz")
    made["nan_npz"] = str(tmp / "nan.npz")
    good = np.zeros((6, 3, 32, 32), np.float32)
    CalibrationSet(good, "noise").save(tmp / "good.npz")
    raw = tmp / "good.npz"
    with np.load(raw) as z:
        meta = json.loads(str(z["metadata"]))
    flipped = good.copy()
    flipped[0, 0, 0, 0] = 1.0  # the stored checksum no longer matches
    np.savez(tmp / "flipped.npz", images=flipped, metadata=np.array(json.dumps(meta)))
    made["flipped_npz"] = str(tmp / "flipped.npz")
    (tmp / "empty_folder").mkdir()
    made["empty_folder"] = str(tmp / "empty_folder")
    (tmp / "foreign").mkdir()
    (tmp / "foreign" / "notes.txt").write_text("the user's own file")
    made["foreign_out"] = str(tmp / "foreign")
    (tmp / "a_file").write_text("x")
    made["a_file"] = str(tmp / "a_file")
    (tmp / "bad.yaml").write_text("path: [unclosed\n")
    made["bad_yaml"] = str(tmp / "bad.yaml")
    (tmp / "no_val.yaml").write_text("path: .\ntrain: images\nnames: {0: a}\n")
    made["no_val_yaml"] = str(tmp / "no_val.yaml")
    (tmp / "missing_splits.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: {0: a}\n")
    made["missing_splits_yaml"] = str(tmp / "missing_splits.yaml")
    return made


# (case id, CLI arguments with {placeholders} from files(), exit code, words the one line must hold)
CASES: list[tuple[str, list[str], int, list[str]]] = [
    ("negative n-images", ["--n-images", "-5"], 2, ["--n-images -5", "1 or more"]),
    ("zero n-images", ["--n-images", "0"], 2, ["--n-images 0"]),
    ("zero iters", ["--iters", "0"], 2, ["--iters 0"]),
    ("negative iters", ["--iters", "-3"], 2, ["--iters -3"]),
    ("zero imgsz", ["--imgsz", "0"], 2, ["--imgsz 0"]),
    ("negative imgsz", ["--imgsz", "-32"], 2, ["--imgsz -32"]),
    ("negative holdout", ["--holdout", "-1"], 2, ["--holdout -1"]),
    ("zero val-limit", ["--val-limit", "0"], 2, ["--val-limit 0"]),
    ("zero threads", ["--threads", "0"], 2, ["--threads 0"]),
    ("negative seed", ["--seed", "-1"], 2, ["--seed -1"]),
    ("negative max-drop", ["--max-drop", "-1", "--val-data", "{empty_folder}"], 2, ["--max-drop -1"]),
    ("max-drop without data", ["--max-drop", "1"], 2, ["--max-drop needs real labelled data"]),
    ("non-integer n-images", ["--n-images", "many"], 2, ["--n-images", "invalid int"]),
    ("unknown device", ["--device", "tpu"], 2, ["--device", "invalid choice"]),
    ("cuda without a GPU", ["--device", "cuda", "--target", "sim"], 2, ["cuda"]),
    ("percentile above 100", ["--target", "sim", "--act-range", "percentile", "--percentile", "101"], 2,
     ["--percentile 101"]),
    ("percentile with min/max", ["--percentile", "99"], 2, ["--percentile 99 has no effect"]),
    ("W4 on tflite", ["--bits", "W4A8"], 2, ["tflite-int8 quantizes to 8 bits"]),
    ("power-of-two on tflite", ["--pot"], 2, ["--pot is an option of --target sim, not of tflite-int8"]),
    ("entropy ranges on tflite", ["--act-range", "entropy"], 2, ["min/max / percentile / mse only"]),
    ("malformed bits", ["--bits", "X9"], 2, ["--bits 'X9'"]),
    ("scales not ending at the full size", ["--scales", "0.5:1"], 2, ["does not end at the full size"]),
    ("malformed scales", ["--scales", "half"], 2, ["--scales 'half'", "0.25:0.7,0.5:0.2,1:0.1"]),
    ("scales fine to coarse", ["--scales", "0.5:0.5,0.25:0.2,1:0.3"], 2, ["is not coarse to fine"]),
    ("bits out of range", ["--target", "sim", "--bits", "W1A8"], 2, ["between 2 and 16"]),
    ("unknown range method", ["--target", "sim", "--act-range", "bogus"], 2, ["'bogus' not supported"]),
    ("unknown weight rounding", ["--target", "sim", "--weight-rounding", "up"], 2, ["invalid choice"]),
    ("output headroom below 1", ["--output-headroom", "0.5"], 2, ["--output-headroom 0.5 is below 1", "pass 1"]),
    ("output headroom not a number", ["--output-headroom", "wide"], 2, ["--output-headroom", "invalid float"]),
    ("unknown bias correction", ["--bias-correction", "maybe"], 2, ["--bias-correction", "invalid choice"]),
    ("bias correction on tensorrt", ["--target", "tensorrt-int8", "--bias-correction", "on"], 2,
     ["--bias-correction is an option of --target", "not of tensorrt-int8"]),
    ("unknown target", ["--target", "nope"], 2, ["unknown target 'nope'"]),
    ("unknown calibration source", ["--calib", "synthetic"], 2, ["unknown calibration source 'synthetic'"]),
    ("missing real folder", ["--calib", "real:/no/such/folder"], 2, ["'/no/such/folder' not found"]),
    ("real folder without images", ["--calib", "real:{foreign_out}"], 2, ["holds no image files"]),
    ("real data YAML whose folders are missing", ["--calib", "real:{missing_splits_yaml}"], 2,
     ["missing_splits.yaml"]),
    ("missing calibration file", ["--calib", "/no/such/calib.npz"], 2, ["'/no/such/calib.npz' not found"]),
    ("corrupt calibration file", ["--calib", "{corrupt_npz}"], 2, ["cannot read calibration file"]),
    ("calibration file of the wrong size", ["--calib", "{wrong_size_npz}"], 2, ["16x16", "32x32"]),
    ("calibration file with NaN", ["--calib", "{nan_npz}"], 2, ["NaN or Inf"]),
    ("calibration file failing its checksum", ["--calib", "{flipped_npz}"], 2, ["is corrupt"]),
    ("missing val data", ["--val-data", "/no/such/data"], 2, ["--val-data '/no/such/data' not found"]),
    ("empty val folder", ["--val-data", "{empty_folder}"], 2, ["empty_folder"]),
    ("val data is a file", ["--val-data", "{a_file}"], 2, ["a_file"]),
    ("out is a file", ["--out", "{a_file}"], 2, ["is a file, not a folder"]),
    ("out holds the user's files", ["--out", "{foreign_out}"], 2, ["not a dgh-deploy result"]),
    ("out cannot be written", ["--out", "/proc/no/such/out"], 2, ["cannot be written"]),
    ("junit cannot be written", ["--junit", "/proc/no/such/verdict.xml"], 2, ["--junit", "cannot be written"]),
    ("missing weights", ["--model", "cifar_resnet20", "--weights", "/no/such.th"], 2,
     ["weights file '/no/such.th' not found"]),
    ("weights folder", ["--model", "cifar_resnet20", "--weights", "{empty_folder}"], 2, ["is not a file"]),
    ("garbage weights", ["--model", "cifar_resnet20", "--weights", "{garbage}"], 2,
     ["not a PyTorch checkpoint"]),
    ("truncated weights", ["--model", "cifar_resnet20", "--weights", "{truncated}"], 2, ["truncated or damaged"]),
    ("NaN weights", ["--model", "cifar_resnet20", "--weights", "{nan_weights}"], 2, ["NaN or Inf", "linear.weight"]),
    ("weights of another architecture", ["--model", "cifar_resnet20", "--weights", "{wrong_arch}"], 2,
     ["do not fit architecture"]),
    ("weights without a state_dict", ["--model", "cifar_resnet20", "--weights", "{no_state}"], 2,
     ["holds no state_dict"]),
    ("unknown model", ["--model", "resnet9000"], 2, ["unknown model 'resnet9000'"]),
    ("garbage Ultralytics checkpoint", ["--model", "{garbage_pt}"], 2, ["not a PyTorch checkpoint"]),
    ("missing Ultralytics checkpoint", ["--model", "/no/such/best.pt"], 2, ["'/no/such/best.pt' not found"]),
    ("missing factory file", ["--model", "/no/such/net.py:make"], 2, ["/no/such/net.py"]),
    ("missing factory function", ["--model", "{factory}:nothing"], 2, ["nothing"]),
    ("factory returns no module", ["--model", "{factory}:not_a_module"], 2, ["not_a_module"]),
    ("factory raises", ["--model", "{factory}:broken"], 2, ["boom"]),
    ("not an image model", ["--model", "{factory}:vector_model", "--target", "sim"], 2,
     ["does not take a 1x3x"]),
    ("wrong task", ["--task", "detect"], 2, ["is not a detector", "head_maps"]),
    ("malformed data YAML", ["--model", "yolov8n.yaml", "--val-data", "{bad_yaml}", "--imgsz", "64"], 2,
     ["bad.yaml"]),
    ("data YAML without val", ["--model", "yolov8n.yaml", "--val-data", "{no_val_yaml}", "--imgsz", "64"], 2,
     ["no_val.yaml"]),
    ("val data YAML whose val folder is missing", ["--val-data", "{missing_splits_yaml}"], 2,
     ["images/val", "missing_splits.yaml"]),
    ("detector size off its stride", ["--model", "yolov8n.yaml", "--imgsz", "100"], 2, ["100"]),
]
GENERATE_CASES: list[tuple[str, list[str], int, list[str]]] = [
    ("generate: out is not .npz", ["--out", "{tmp}/set.bin"], 2, ["must end in .npz"]),
    ("generate: zero images", ["--n-images", "0", "--out", "{tmp}/set.npz"], 2, ["--n-images 0"]),
    ("generate: unwritable out", ["--out", "/proc/no/such/set.npz"], 2, ["cannot be written"]),
    ("generate: unknown source", ["--calib", "synthetic", "--out", "{tmp}/set.npz"], 2, ["unknown calibration"]),
]


def fill(args: list[str], made: dict[str, str], tmp: Path) -> list[str]:
    return [a.format(tmp=tmp, **made) for a in args]


def check_failure(run: Callable[[], int], capsys: pytest.CaptureFixture[str], code: int, words: list[str],
                  out: Path) -> None:
    t0 = time.perf_counter()
    got = run()
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert got == code, err
    assert len(lines) == 1, err
    assert lines[0].startswith("dgh-deploy") and "error:" in lines[0], lines[0]
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], lines[0]
    assert not out.exists() or out.is_file() or not any(p.name != "notes.txt" for p in out.iterdir())
    assert seconds < SECONDS, f"found after {seconds:.1f} s"


@pytest.mark.parametrize(("case", "args", "code", "words"), CASES, ids=[c[0] for c in CASES])
def test_job_refuses_bad_input(case: str, args: list[str], code: int, words: list[str], tmp_path: Path,
                               capsys: pytest.CaptureFixture[str], no_generation: None) -> None:
    made = files(tmp_path)
    argv = fill(args, made, tmp_path)
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else tmp_path / "out"
    if "--out" not in argv:
        argv += ["--out", str(out)]
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    check_failure(lambda: main([*argv, "--no-cache", "--quiet"]), capsys, code, words, out)
    if before is not None:
        assert sorted(p.name for p in out.iterdir()) == before  # the folder is as it was


BEFORE_THE_MODEL = ["missing real folder", "real folder without images", "real data YAML whose folders are missing",
                    "missing val data", "val data is a file", "val data YAML whose val folder is missing",
                    "missing calibration file", "out is a file", "zero n-images", "cuda without a GPU"]


@pytest.mark.parametrize("case", BEFORE_THE_MODEL)
def test_paths_and_counts_are_refused_before_the_model_loads(case: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing the user names on the command line waits for the model to load (seconds to a minute)."""
    import dgh_deploy.pipeline as pipeline

    def no_model(*_: object, **__: object) -> None:
        raise AssertionError("the model loaded before the bad input was refused")

    monkeypatch.setattr(pipeline, "load_model", no_model)
    _, args, code, words = next(c for c in CASES if c[0] == case)
    argv = fill(args, files(tmp_path), tmp_path)
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    check_failure(lambda: main([*argv, "--no-cache", "--quiet"]), capsys, code, words, tmp_path / "out")


@pytest.mark.parametrize(("case", "args", "code", "words"), GENERATE_CASES, ids=[c[0] for c in GENERATE_CASES])
def test_generate_refuses_bad_input(case: str, args: list[str], code: int, words: list[str], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str], no_generation: None) -> None:
    argv = fill(args, {}, tmp_path)
    check_failure(lambda: main(["generate", *argv, "--quiet"]), capsys, code, words, tmp_path / "set.npz")
    assert not list(tmp_path.glob("*.npz*"))


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"n_images": -1}, ["--n-images -1"]),
    ({"calib": "synthetic"}, ["unknown calibration source"]),
    ({"silu_floor": 2.0, "target": "sim"}, ["target 'sim' has no setting 'silu_floor'"]),
    ({"max_drop": 1.0}, ["--max-drop needs real labelled data"]),
])
def test_python_api_refuses_bad_input(kwargs: dict, words: list[str], tmp_path: Path, no_generation: None) -> None:
    target = kwargs.pop("target", "tflite-int8")
    with pytest.raises(DGHError) as err:
        dgh_deploy.deploy(target=target, out=str(tmp_path / "out"), use_cache=False, **kwargs)
    for word in words:
        assert word in str(err.value)
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()
    with pytest.raises(DGHError, match="--iters 0"):
        dgh_deploy.generate(iters=0, out=str(tmp_path / "x.npz"))


def test_no_third_party_chatter_in_a_fresh_home(tmp_path: Path) -> None:
    """A new user's first failing run: Ultralytics' settings banner and warnings stay out of the terminal."""
    (tmp_path / "garbage.pt").write_bytes(b"garbage")
    env = {**os.environ, "HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "home" / ".config")}
    env.pop("YOLO_VERBOSE", None)
    env.pop("YOLO_CONFIG_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "dgh_deploy", "--model", str(tmp_path / "garbage.pt"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"dgh-deploy: error: cannot read Ultralytics checkpoint '{tmp_path / 'garbage.pt'}' (it is not a PyTorch "
        "checkpoint). pass a .pt saved by Ultralytics (model.save / a training run)."]


def test_corpus_is_large_enough() -> None:
    assert len(CASES) + len(GENERATE_CASES) >= 40
