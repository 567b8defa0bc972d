"""The CLI contract: bad input gets one line, exit code 2, no traceback, nothing half-written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dgh_deploy.cli import main
from dgh_deploy.models import DEMO_WEIGHTS


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("dgh-deploy:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_subprocess_exit_code_and_no_traceback(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "dgh_deploy", "--target", "no-such-target", "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "unknown target 'no-such-target'", "use one of")
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--model", "nonesuch"], ["unknown model 'nonesuch'"]),
        (["--model", "cifar_resnet20", "--weights", "missing.th"], ["weights file 'missing.th' not found"]),
        (["--model", "cifar_resnet56", "--weights", str(DEMO_WEIGHTS)], ["do not fit architecture"]),
        (["--bits", "8bit"], ["--bits '8bit'", "W8A8"]),
        (["--task", "detect"], ["is not a detector"]),
    ],
)
def test_deploy_bad_input(args: list[str], needles: list[str], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, _, err = run([*args, "--target", "sim", "--out", str(out)], capsys)
    assert code == 2
    assert_one_line_error(err, *needles)
    assert not out.exists()


@pytest.mark.parametrize(
    ("target", "args", "needles"),
    [
        ("tflite-int8", ["--act-range", "entropy"], ["by min/max / percentile / mse only, not 'entropy'"]),
        ("tflite-int8", ["--percentile", "99.9"], ["--percentile 99.9 has no effect", "--act-range percentile"]),
        ("tensorrt-int8", ["--percentile", "99.9"], ["ranges are by entropy here"]),
        ("tensorrt-int8", ["--bits", "W4A8"], ["not W4A8", "drop --bits"]),
        ("tensorrt-int8", ["--act-range", "percentile", "--percentile", "150"], ["outside (50, 100]"]),
        ("sim", ["--act-range", "percentile", "--percentile", "40"], ["--percentile 40 is outside"]),
        ("tensorrt-int8", ["--act-range", "mse"], ["'mse' is not available for TensorRT"]),
        ("sim", ["--act-range", "entropy"], ["'entropy' not supported by the sim target"]),
    ],
)
def test_target_options_are_refused_before_generation(target: str, args: list[str], needles: list[str],
                                                       tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import dgh_deploy.generation

    def no_generation(*_: object, **__: object) -> None:
        raise AssertionError("generation started before the options were checked")

    monkeypatch.setattr(dgh_deploy.generation, "make_calibration_set", no_generation)
    out = tmp_path / "out"
    code, _, err = run(["--target", target, *args, "--no-cache", "--out", str(out)], capsys)
    assert code == 2
    assert_one_line_error(err, *needles)
    assert not out.exists()


def test_corrupt_and_nan_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corrupt = tmp_path / "corrupt.th"
    corrupt.write_bytes(b"\x00garbage")
    code, _, err = run(["generate", "--model", "cifar_resnet20", "--weights", str(corrupt),
                        "--out", str(tmp_path / "x.npz")], capsys)
    assert code == 2
    assert_one_line_error(err, "cannot read weights file")

    state = torch.load(DEMO_WEIGHTS, weights_only=True)["state_dict"]
    state["linear.bias"][3] = float("inf")
    nan = tmp_path / "inf.pt"
    torch.save(state, nan)
    code, _, err = run(["generate", "--model", "cifar_resnet20", "--weights", str(nan),
                        "--out", str(tmp_path / "x.npz")], capsys)
    assert code == 2
    assert_one_line_error(err, "NaN or Inf", "linear.bias")
    assert not (tmp_path / "x.npz").exists()


def test_generate_needs_npz(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["generate", "--out", str(tmp_path / "x.txt")], capsys)
    assert code == 2
    assert_one_line_error(err, "must end in .npz")


def test_models_lists_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["models"], capsys)
    assert code == 0
    assert "cifar_resnet20" in out and "demo" in out


@pytest.mark.parametrize("flag, expected", [([], True), (["--no-bias-correction"], False),
                                           (["--bias-correction", "off"], False), (["--bias-correction", "on"], True)])
def test_sim_bias_correction_flag_reaches_the_report(flag: list[str], expected: bool, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from dgh_deploy.reporting.report import Report

    out = tmp_path / "sim"
    code, _, err = run(["--target", "sim", "--calib", "noise", "--n-images", "16", "--holdout", "0", "--bits", "W4A8",
                        "--no-cache", "--no-human-report", "--out", str(out), *flag], capsys)
    assert code == 0, err
    target = Report.read(out / "report.json").target
    assert target.facts.bias_correction is expected and target.constraints["weight_bits"] == 4


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_turns_off_the_jobs_progress_bar(quiet: bool, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["--target", "sim", "--calib", "dgh", "--n-images", "8", "--iters", "2", "--holdout", "0",
                        "--no-cache", "--no-human-report", "--out", str(tmp_path / "sim"),
                        *(["--quiet"] if quiet else [])], capsys)
    assert code == 0, err
    assert ("generating (dgh)" in err) is not quiet
