"""The target house rules: one folder per target, found by the registry, calibrating through one interface."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import numpy as np
import pytest

import dgh_deploy.targets as targets_pkg
from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.errors import DGHError
from dgh_deploy.reporting import load_schema, validate_report
from dgh_deploy.reporting.report import Report
from dgh_deploy.targets import Calibrator, Target, all_targets, get_target

TARGETS_DIR = Path(targets_pkg.__file__).parent


def own_calibrators(package: str) -> list[type]:
    """The Calibrator subclasses defined in ``package.calibrator`` (none when there is no such module)."""
    if importlib.util.find_spec(f"{package}.calibrator") is None:
        return []
    module = importlib.import_module(f"{package}.calibrator")
    return [c for _, c in inspect.getmembers(module, inspect.isclass)
            if issubclass(c, Calibrator) and c.__module__ == module.__name__]


def test_every_target_is_one_folder_with_its_calibrator() -> None:
    """A target calibrates through a calibrator of its own folder, or, when it ships another target's
    file format with one more step (Ethos-U: the tflite-int8 file, compiled by Vela), through that
    target's, which it holds (got from the registry by name): no target subclasses another."""
    found = all_targets()
    assert set(found) >= {"tflite-int8", "tensorrt-int8", "sim"}
    for name, cls in found.items():
        package = cls.__module__.rsplit(".", 1)[0]
        assert Path(inspect.getfile(cls)).parent.parent == TARGETS_DIR, f"{name} lives outside its own folder"
        parents = [p for p in cls.__mro__[1:] if issubclass(p, Target) and p is not Target]
        assert parents == [], f"{name} subclasses {parents[0].__name__}: hold that target instead"
        if own_calibrators(package):
            continue
        held = [t for t in vars(get_target(name)).values() if isinstance(t, Target)]
        assert held, f"{name} has no Calibrator subclass in {package}.calibrator and builds on no other target"
        inner = type(held[0]).__module__.rsplit(".", 1)[0]
        assert own_calibrators(inner), f"{name} calibrates as {held[0].name}, which has no calibrator"
    # Nothing but the shared base and the folders sits in targets/.
    loose = sorted(p.name for p in TARGETS_DIR.glob("*.py") if p.name not in ("__init__.py", "base.py"))
    assert loose == []


TOY_TARGET = """
from dataclasses import dataclass
from pathlib import Path

from dgh_deploy.reporting.section import TargetSection
from dgh_deploy.runtime.base import TorchRunner
from dgh_deploy.targets.base import BuildResult, QuantConstraints, Target, TargetFlag
from dgh_deploy.verification.gate import GateCheck

@dataclass
class ToySection(TargetSection):
    turns: int
    strict: bool

    def to_json(self):
        return {"toy": {"turns": self.turns, "strict": self.strict}}

    @classmethod
    def from_json(cls, d):
        return cls(**d["toy"])

    @classmethod
    def json_schema(cls):
        return {"toy": {"type": "object", "required": ["turns"], "properties": {"turns": {"type": "integer"}}}}

class ToyTarget(Target):
    name = "toy"
    summary = "a toy"
    runtime = "none"
    constraints = QuantConstraints()
    section = ToySection
    flags = (TargetFlag("--toy-knob", "knob", "how far to turn it", int),
             TargetFlag("--toy-strict", "strict", "a switch", None))

    def __init__(self, options=None, knob: int = 1, strict: bool = False):
        super().__init__(options)
        self.knob, self.strict = knob, strict

    def check_options(self, model):
        pass

    def build(self, model, calib, workdir, early=None):
        path = Path(workdir) / "toy.bin"
        path.write_bytes(b"toy")
        return BuildResult({"model": path}, TorchRunner(model.module), ToySection(self.knob, self.strict))

    def summary_lines(self, report):
        return [f"toy: turned {report.target.facts.turns} times"]

    def markdown_lines(self, report):
        return ["## Toy", "", f"Turned {report.target.facts.turns} times.", ""]

    def gate_checks(self, report):
        toy = report.target.facts
        if not toy.strict:
            return []
        ok = toy.turns <= 3
        return [GateCheck("toy_turns", ok, f"{'PASS' if ok else 'FAIL'}: turned {toy.turns} times",
                          "turn it 3 times at most")]

TARGET = ToyTarget
"""


@pytest.fixture
def toy_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A target added the way every target is: one folder, nothing else touched."""
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "__init__.py").write_text(TOY_TARGET)
    monkeypatch.setattr(targets_pkg, "__path__", [*targets_pkg.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "dgh_deploy.targets.toy", raising=False)
    load_schema.cache_clear()  # the schema takes in every target's section, the toy's too
    yield
    sys.modules.pop("dgh_deploy.targets.toy", None)
    load_schema.cache_clear()


def test_a_new_folder_is_a_new_target(toy_target: None) -> None:
    assert "toy" in all_targets() and isinstance(get_target("toy"), Target)
    assert get_target("toy", knob=3).knob == 3  # the target's own typed settings reach it
    with pytest.raises(DGHError, match=r"target 'toy' has no setting 'knobb'\. it takes: knob, strict"):
        get_target("toy", knobb=3)
    with pytest.raises(DGHError, match="unknown target 'nope'"):
        get_target("nope")


def test_a_target_brings_its_own_cli_flags(toy_target: None, capsys: pytest.CaptureFixture[str]) -> None:
    from dgh_deploy import cli

    args = cli.build_parser("deploy").parse_args(["--target", "toy", "--toy-knob", "5", "--toy-strict"])
    assert cli.target_settings(args) == {"knob": 5, "strict": True}
    assert cli.target_settings(cli.build_parser("deploy").parse_args(["--target", "toy"])) == {}
    # Another target's flag is refused in the first second, before the model is even loaded.
    assert cli.main(["--target", "sim", "--toy-knob", "5", "--model", "no-such-model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("dgh-deploy: error: --toy-knob is an option of --target toy, not of sim. "
                   "drop --toy-knob, or use --target toy.")


def test_a_target_brings_its_report_section_gate_check_and_lines(toy_target: None, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The toy folder alone gives the job its report.json section (typed, and in the schema), its
    report.md section, its closing line and its own gate check, failing the job like --max-drop does."""
    from dgh_deploy import cli

    job = ["--target", "toy", "--calib", "noise", "--n-images", "8", "--holdout", "8", "--no-cache"]
    assert cli.main([*job, "--toy-knob", "2", "--out", str(tmp_path / "ok")]) == 0
    assert "toy: turned 2 times" in capsys.readouterr().out
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    validate_report(report)
    assert report["target"]["toy"] == {"turns": 2, "strict": False} and "gate" not in report
    assert "## Toy\n\nTurned 2 times." in (tmp_path / "ok" / "report.md").read_text()
    report["target"]["toy"]["turns"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate_report(report)

    assert cli.main([*job, "--toy-knob", "5", "--toy-strict", "--out", str(tmp_path / "strict")]) == 3
    assert "dgh-deploy: error: FAIL: turned 5 times. turn it 3 times at most" in capsys.readouterr().err
    strict = Report.read(tmp_path / "strict" / "report.json")
    gate, toy = strict.gate, strict.target.facts
    assert gate is not None and [(c.name, c.passed) for c in gate.checks] == [("toy_turns", False)]
    assert type(toy).__name__ == "ToySection" and (toy.turns, toy.strict) == (5, True)  # type: ignore[union-attr]


def test_a_section_without_a_declared_type_reads_back_as_the_dict_written(
        toy_target: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dgh_deploy import cli

    job = ["--target", "toy", "--calib", "noise", "--n-images", "8", "--holdout", "8", "--no-cache"]
    assert cli.main([*job, "--toy-knob", "2", "--out", str(tmp_path / "ok"), "--no-human-report"]) == 0
    monkeypatch.setattr(all_targets()["toy"], "section", None)  # a target that declares no type
    report = Report.read(tmp_path / "ok" / "report.json")
    assert report.target.facts == {"toy": {"turns": 2, "strict": False}}
    assert report.to_json() == json.loads((tmp_path / "ok" / "report.json").read_text())


def test_the_shared_code_names_no_target_and_no_runtime() -> None:
    """The CLI, reporting and verification reach every target's part through the Target interface."""
    shared = [TARGETS_DIR.parent / "dgh_deploy" / "cli.py",
              *(TARGETS_DIR.parent / "dgh_deploy" / "reporting").glob("*"),
              *(TARGETS_DIR.parent / "dgh_deploy" / "verification").glob("*.py")]
    words = {part for name in all_targets() for part in (name, name.split("-")[0])}
    words |= {"litert", "tflite", "micro", "vela", "ethos", "npu", "onnx2tf", "onnxruntime", "tensorrt", "trt"}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(words))) + r")(?![a-z])", re.IGNORECASE)
    named = [f"{p.name}: {m.group(0)}" for p in shared if p.is_file() for m in pattern.finditer(p.read_text())]
    assert named == []


class Recorder(Calibrator[list[tuple[int, tuple[int, ...]]]]):
    layout = "NHWC"

    def __init__(self) -> None:
        super().__init__(batch_size=3, passes=2)
        self.seen: list[tuple[int, tuple[int, ...]]] = []
        self.pass_index = -1

    def begin_pass(self, index: int) -> None:
        self.pass_index = index

    def observe(self, batch: np.ndarray) -> None:
        self.seen.append((self.pass_index, batch.shape))

    def result(self) -> list[tuple[int, tuple[int, ...]]]:
        return self.seen


def test_the_calibrator_interface_feeds_every_batch_in_every_pass() -> None:
    calib = CalibrationSet(np.zeros((7, 3, 4, 5), np.float32), "noise")
    seen = Recorder().calibrate(calib)
    shapes = [(3, 4, 5, 3), (3, 4, 5, 3), (1, 4, 5, 3)]
    assert seen == [(0, s) for s in shapes] + [(1, s) for s in shapes]
    calib.images[2, 0, 0, 0] = np.inf
    with pytest.raises(DGHError, match="NaN or Inf"):
        Recorder().calibrate(calib)


def test_each_target_calibrates_the_same_set_through_the_interface(tmp_path: Path) -> None:
    """The same CalibrationSet, one call each: TFLite's representative data, TensorRT's and sim's ranges."""
    import torch
    from test_generation_models import as_loaded
    from torch import nn

    from dgh_deploy.calibration.observers import QuantGrid
    from dgh_deploy.onnx_export import export_onnx
    from dgh_deploy.targets.sim.calibrator import SimCalibration, SimCalibrator
    from dgh_deploy.targets.sim.fake_quant import QuantOutputs, quantize_layers
    from dgh_deploy.targets.tensorrt.calibrator import ActRange, TensorRTCalibrator
    from dgh_deploy.targets.tensorrt.qdq import calibration_tensors
    from dgh_deploy.targets.tflite.calibrator import TFLiteCalibrator

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    images = np.random.default_rng(0).normal(size=(6, 3, 8, 8)).astype(np.float32)
    calib = CalibrationSet(images, "noise")

    data = TFLiteCalibrator(tmp_path / "rep.npy", (8, 8)).calibrate(calib)
    np.testing.assert_array_equal(np.load(data.path), images.transpose(0, 2, 3, 1))

    onnx_path = export_onnx(as_loaded(net, (8, 8)), tmp_path / "m.onnx")
    tensors = calibration_tensors(__import__("onnx").load(str(onnx_path)))
    amax = TensorRTCalibrator(onnx_path, tensors, ActRange("max"), batch_size=4).calibrate(calib)
    assert amax["images"] == pytest.approx(float(np.abs(images).max()), rel=1e-3)

    grid = QuantGrid(8, symmetric=False)
    layers = quantize_layers(net, QuantGrid(8, True, narrow=True), grid, per_channel=True, weight_method="mse")
    sim = QuantOutputs(net, grid, 1).eval()
    quantizers = SimCalibrator(sim, layers, SimCalibration("minmax", 99.99, False, "nearest")).calibrate(calib)
    first = next(q for q in quantizers if q.range is not None)
    assert first.range == pytest.approx((float(images.min()), float(images.max())))
