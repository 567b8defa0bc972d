"""The ethos-u target: Vela's placement, memory and time in the report, --require-npu, its own flags.

One small classifier ending in log_softmax (TFLite's LOG_SOFTMAX, an op Vela cannot place on the
NPU) goes through the whole job once, with --require-npu: exit 3, the report and every file kept.
The bundled demo is held at 100% NPU ops. The rest needs no conversion: option checks (before
anything is generated), the report parser on Vela's own output, and the gate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dgh_deploy.cli import main
from dgh_deploy.errors import DGHError
from dgh_deploy.reporting import validate_report
from dgh_deploy.reporting.report import CalibrationEntry, DeviceScores, Metrics, ModelEntry, Report, TargetEntry
from dgh_deploy.targets import get_target
from dgh_deploy.targets.ethos_u.section import EthosUSection, NpuSection
from dgh_deploy.targets.ethos_u.vela import (
    ACCELERATORS,
    CPUOp,
    VelaReport,
    VelaSettings,
    compile_model,
    installed_accelerators,
    parse_report,
    read_summary,
    sram_capacity_kib,
    sram_only_mode,
)
from dgh_deploy.targets.tflite.section import MicroSection, TFLiteSection
from dgh_deploy.verification.gate import GateVerdict, gate_verdict

LOG_SOFTMAX_NET = '''
import torch
from torch import nn


class LogSoftmaxNet(nn.Module):
    input_size = 16

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return torch.log_softmax(self.fc(x.mean((2, 3))), dim=1)


def net():
    torch.manual_seed(0)
    return LogSoftmaxNet()
'''


def no_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    import dgh_deploy.generation

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("generation started before the options were checked")

    monkeypatch.setattr(dgh_deploy.generation, "make_calibration_set", refuse)


# --- options: refused in the first seconds ------------------------------------------------------------


@pytest.mark.parametrize(("flags", "message"), [
    (["--npu", "ethos-u99-128"], "Vela 5.2.0 has no accelerator configuration 'ethos-u99-128'. use --npu with one "
                                 "of: ethos-u55-32,"),
    (["--memory-mode", "Sram_Only_1KB"], "Vela's configuration files have no memory mode 'Sram_Only_1KB'. use "
                                         "--memory-mode with one of:"),
    (["--system-config", "Nope"], "no system config 'Nope'"),
    (["--io-dtype", "uint8"], "--io-dtype is an option of --target tflite-int8, not of ethos-u"),
])
def test_bad_options_are_refused_before_generation(flags: list[str], message: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    no_generation(monkeypatch)
    assert main(["--target", "ethos-u", *flags, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0


def test_an_ethos_u_flag_is_refused_on_another_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    no_generation(monkeypatch)
    assert main(["--target", "tflite-int8", "--require-npu", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == ("dgh-deploy: error: --require-npu is an option of --target ethos-u, "
                                               "not of tflite-int8. drop --require-npu, or use --target ethos-u.")


def test_missing_vela_is_the_install_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from dgh_deploy.targets.ethos_u import EthosUTarget

    no_generation(monkeypatch)
    monkeypatch.setattr(EthosUTarget, "requires", ("ethosu_not_installed",))
    assert main(["--target", "ethos-u", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (
        "dgh-deploy: error: target 'ethos-u' needs the Python packages ethosu_not_installed. pip install "
        "'dgh-deploy[tflite]' (it brings ethos-u-vela and tflite-micro).")


def test_the_flags_reach_the_target() -> None:
    target = get_target("ethos-u", npu="ethos-u65-256", memory_mode="Sram_Only_512KB", require_npu=True)
    assert target.vela == VelaSettings("ethos-u65-256", "", "Sram_Only_512KB") and target.require_npu
    assert target.vela.resolved() == VelaSettings("ethos-u65-256", "Ethos_U65_Client_Server", "Sram_Only_512KB")
    assert set(ACCELERATORS) == set(installed_accelerators())  # the CLI help lists what Vela knows


def test_targets_lists_ethos_u_with_vela_and_its_constraints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    block = out[out.index("ethos-u "):].split("\n")[:4]
    assert "W8 sym per-channel, A8 asym per-tensor, I/O int8" in block[1]
    assert "Vela 5.2.0: int8 weights, symmetric (zero point 0) per channel" in block[2]
    assert "TFLite ops can run on the Ethos-U55/U65 NPU" in block[2] and "TFLite Micro" in block[3]


def test_our_sram_only_mode_is_512_kib_of_sram() -> None:
    assert sram_only_mode("Sram_Only_512KB") and sram_only_mode("Sram_Only")
    assert not sram_only_mode("Shared_Sram") and not sram_only_mode("Dedicated_Sram_384KB")
    assert sram_capacity_kib("Sram_Only_512KB") == 512 and sram_capacity_kib("Shared_Sram") is None


# --- Vela's output, parsed ----------------------------------------------------------------------------

VELA_LOG = """TfLiteReader: Built-in options type 'LogSoftmaxOptions' is not yet implemented and will be ignored.

Warning (supported operators) operator: LOG_SOFTMAX, ofm: 'PartitionedCall:0'
Reason: Unsupported opType

Warning (supported operators) operator: QUANTIZE, ofm: 'tfl.quantize'
Reason: Operation has tensor with unsupported DataType Float32 (model/Floor)
Feature-map dataTypes must be one of {"INT16", "INT32", "INT64", "INT8", "UINT8"}

Network summary for net
CPU operators = 2 (28.6%)
NPU operators = 5 (71.4%)
"""
SUMMARY = {"system_config": "Ethos_U55_High_End_Embedded", "memory_mode": "Sram_Only_512KB", "core_clock": "5e8",
           "inference_time": "0.00123", "sram_memory_used": "50.5", "on_chip_flash_memory_used": "253.0",
           "off_chip_flash_memory_used": "0.0", "dram_memory_used": "0.0", "nn_macs": "40817280",
           "cycles_total": "616482", "cycles_npu": "543374"}


def test_the_report_reads_placement_reasons_memory_and_time() -> None:
    r = parse_report(VELA_LOG, SUMMARY, VelaSettings("ethos-u55-128", "", "Sram_Only_512KB").resolved())
    assert (r.npu_ops, r.cpu_ops, round(r.npu_share, 1)) == (5, 2, 71.4)
    assert [(op.op, op.name, op.reason) for op in r.cpu_fallback] == [
        ("LOG_SOFTMAX", "PartitionedCall:0", "Unsupported opType"),
        ("QUANTIZE", "tfl.quantize", "Operation has tensor with unsupported DataType Float32 (model/Floor)")]
    assert r.cpu_fallback[1].constraint.startswith("Feature-map dataTypes must be one of")
    # SRAM only: the weights Vela reports as on-chip flash sit in the same 512 KiB SRAM.
    assert (r.sram_kib, r.flash_kib, r.sram_capacity_kib, r.fits_sram) == (303.5, 0.0, 512, True)
    assert (r.inference_ms, r.macs, r.cycles_total, r.core_clock_mhz) == (1.23, 40817280, 616482, 500.0)


# --- the gate -----------------------------------------------------------------------------------------


def npu_report(cpu_fallback: list[dict[str, str]], require: bool = True, device: bool = False) -> Report:
    metrics = Metrics("top1", float_scores={"top1": 80.0}, quantized={"top1": 79.0}, drop=1.0)
    if device:
        metrics.device = DeviceScores("tflite-micro", "litert-int8", scored=True, float_scores={"top1": 80.0},
                                      quantized={"top1": 76.0, "images": 9}, drop=4.0)
    vela = VelaReport("ethos-u55-128", "S", "M", 9, len(cpu_fallback), [CPUOp(**op) for op in cpu_fallback],
                      sram_kib=1.0, flash_kib=1.0, dram_kib=0.0, sram_capacity_kib=None, fits_sram=None,
                      inference_ms=1.0, cycles_total=1, cycles_npu=1, macs=1, core_clock_mhz=500.0)
    tflite = TFLiteSection("litert-torch", {}, [], {}, 8, {}, MicroSection(), "split")
    section = EthosUSection(tflite, NpuSection(vela, require))
    return Report(ModelEntry("m", None, "classify", [32, 32], "f"), TargetEntry("ethos-u", "r", {}, section),
                  CalibrationEntry("noise", 8, 0, False, {}, {}), {}, metrics, {}, {}, {})


def gate(report: Report, max_drop: float | None) -> GateVerdict | None:
    """The job's gate: the target's own checks, then --max-drop's."""
    return gate_verdict(report.metrics, max_drop, get_target("ethos-u").gate_checks(report))


def test_require_npu_fails_on_any_cpu_op_and_names_it() -> None:
    op = {"op": "LOG_SOFTMAX", "name": "PartitionedCall:0", "reason": "Unsupported opType"}
    assert gate(npu_report([op], require=False), None) is None
    verdict = gate(npu_report([op]), None)
    assert verdict is not None and not verdict.passed
    assert verdict.verdict.startswith("FAIL: 1 of 10 ops fall back to the CPU of ethos-u55-128 (S, M), against "
                                      "--require-npu: LOG_SOFTMAX 'PartitionedCall:0' (Unsupported opType)")
    assert "drop --require-npu" in verdict.fix and "--max-drop" not in verdict.fix  # the failed check's own fix
    verdict = gate(npu_report([]), None)
    assert verdict is not None and verdict.passed
    assert verdict.verdict == "PASS: all 9 ops on the NPU of ethos-u55-128 (S, M), as --require-npu asks"


def test_max_drop_reads_the_device_runtime() -> None:
    verdict = gate(npu_report([], require=False, device=True), 2.0)
    assert verdict is not None and not verdict.passed
    assert verdict.verdict == ("FAIL: top1 80.00 float -> 76.00 quantized on tflite-micro (9 images), drop 4.00 "
                               "points, more than --max-drop 2.0")
    assert "relax --max-drop" in verdict.fix
    verdict = gate(npu_report([], require=False), 2.0)
    assert verdict is not None and verdict.passed  # LiteRT's drop when no device metric


def test_each_gate_check_is_judged_and_reported_on_its_own() -> None:
    op = {"op": "LOG_SOFTMAX", "name": "x", "reason": "Unsupported opType"}
    verdict = gate(npu_report([op], device=True), 5.0)  # NPU fails, the drop (4.0) passes
    assert verdict is not None and [c.name for c in verdict.failed] == ["require_npu"]
    assert verdict.verdict.startswith("FAIL: 1 of 10") and "max-drop" not in verdict.verdict
    checks = verdict.entry(5.0).checks
    assert [(c.name, c.passed) for c in checks] == [("require_npu", False), ("max_drop[5.0]", True)]


# --- the whole job ------------------------------------------------------------------------------------


def image_folder(root: Path, classes: int = 10, per_class: int = 2) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def fallback_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path]:
    """The log_softmax classifier with --require-npu: (exit code, stderr, output folder)."""
    import contextlib
    import io

    from dgh_deploy.targets.tflite.target import installed_converter

    if installed_converter() != "onnx2tf":  # ai-edge-quantizer leaves LOG_SOFTMAX in float: refused before Vela
        pytest.skip("the op Vela cannot place is int8 with onnx2tf only; litert-torch's float op is refused earlier")

    tmp = tmp_path_factory.mktemp("ethos-u")
    (tmp / "logsm.py").write_text(LOG_SOFTMAX_NET)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--target", "ethos-u", "--model", f"{tmp / 'logsm.py'}:net", "--calib", "noise", "--n-images", "8",
                     "--holdout", "4", "--val-data", str(image_folder(tmp / "val")), "--require-npu",
                     "--out", str(tmp / "out"), "--junit", str(tmp / "out.xml"), "--quiet"])
    return code, err.getvalue(), tmp / "out"


def test_require_npu_fails_the_job_after_writing_everything(fallback_job: tuple[int, str, Path]) -> None:
    code, err, out = fallback_job
    assert code == 3
    line = [ln for ln in err.splitlines() if ln.startswith("dgh-deploy: error:")]
    assert len(line) == 1 and "FAIL: 1 of 5 ops fall back to the CPU of ethos-u55-128" in line[0]
    assert "LOG_SOFTMAX 'PartitionedCall:0' (Unsupported opType)" in line[0]
    validate_report(json.loads((out / "report.json").read_text()))
    report = Report.read(out / "report.json")
    assert report.gate is not None and report.gate.passed is False and report.gate.verdict in line[0]
    for role in ("model", "vela_model", "vela_summary", "vela_log"):
        assert (out / report.artifacts[role].path).stat().st_size > 0
    assert report.artifacts["vela_model"].path == "logsm_net_full_integer_quant_vela.tflite"
    assert "| LOG_SOFTMAX | `PartitionedCall:0` | Unsupported opType" in (out / "report.md").read_text()
    assert "drop --require-npu" in line[0] and "--max-drop" not in line[0]  # the hint of the check that failed


def test_require_npu_is_a_junit_case(fallback_job: tuple[int, str, Path]) -> None:
    import xml.etree.ElementTree as ET

    suite = ET.parse(fallback_job[2].with_suffix(".xml")).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "1"
    failed = [c for c in suite.iter("testcase") if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["require_npu"]
    message = failed[0].find("failure").get("message")  # type: ignore[union-attr]
    assert message.startswith("FAIL: 1 of 5 ops fall back to the CPU")


def test_the_report_has_vela_s_figures(fallback_job: tuple[int, str, Path]) -> None:
    section = Report.read(fallback_job[2] / "report.json").target.facts
    assert isinstance(section, EthosUSection) and section.ethos_u is not None
    npu = section.ethos_u.vela
    assert (npu.accelerator, npu.system_config, npu.memory_mode) == (
        "ethos-u55-128", "Ethos_U55_High_End_Embedded", "Shared_Sram")
    assert (npu.npu_ops, npu.cpu_ops, npu.vela_version, section.ethos_u.require_npu) == (4, 1, "5.2.0", True)
    assert npu.cpu_fallback == [CPUOp("LOG_SOFTMAX", "PartitionedCall:0", "Unsupported opType", "")]
    assert npu.sram_kib > 0 and npu.flash_kib > 0 and npu.inference_ms > 0
    assert npu.macs > 0 and npu.cycles_total >= npu.cycles_npu > 0


def test_the_job_verifies_on_tflite_micro(fallback_job: tuple[int, str, Path]) -> None:
    report = Report.read(fallback_job[2] / "report.json")
    section, dev = report.target.facts, report.metrics.device
    assert isinstance(section, EthosUSection) and isinstance(section.tflite, TFLiteSection)
    assert (section.tflite.tflite_micro.arena_bytes or 0) > 0
    assert dev is not None and dev.quantized is not None and dev.agreement is not None
    assert dev.runtime == "tflite-micro" and dev.desktop_runtime == "litert-int8"
    assert dev.data_free_agreement is not None and dev.data_free_agreement["images"] == 4
    assert dev.quantized["images"] == 20
    assert dev.agreement["top1_agreement"] >= 90 and dev.agreement["images"] == 20
    assert dev.desktop_minus_device is not None and abs(dev.desktop_minus_device) <= 10  # 20 images: one is 5 points


def test_another_memory_mode_compiles_the_same_file(fallback_job: tuple[int, str, Path], tmp_path: Path) -> None:
    out = fallback_job[2]
    model = out / Report.read(out / "report.json").artifacts["model"].path
    r = compile_model(model, VelaSettings("ethos-u65-256", "", "Sram_Only_512KB"), tmp_path).report
    assert (r.accelerator, r.memory_mode, r.sram_capacity_kib, r.fits_sram) == ("ethos-u65-256", "Sram_Only_512KB",
                                                                              512, True)
    summary = read_summary(next(tmp_path.rglob("*.csv")))  # SRAM only: the weights count as SRAM
    assert r.flash_kib == 0 and r.sram_kib == round(float(summary["sram_memory_used"])
                                                    + float(summary["on_chip_flash_memory_used"]), 2)
    with pytest.raises(DGHError, match=r"Vela could not compile 'missing\.tflite'"):
        compile_model(tmp_path / "missing.tflite", VelaSettings(), tmp_path)


@pytest.mark.slow
def test_the_demo_runs_every_op_on_the_npu(tmp_path: Path) -> None:
    import dgh_deploy

    report = dgh_deploy.deploy(target="ethos-u", calib="noise", n_images=8, holdout=4, out=str(tmp_path / "demo"),
                               human_report=False, require_npu=True).report
    npu = report.target.facts.ethos_u.vela
    assert npu.cpu_ops == 0 and npu.npu_ops > 30 and report.gate is not None and report.gate.passed
    assert report.metrics.device is not None and report.metrics.device.data_free_agreement is not None
    assert report.metrics.device.data_free_agreement["top1_agreement"] >= 75


@pytest.mark.slow
def test_int16_layers_run_on_the_npu(tmp_path: Path) -> None:
    """--int16-layers on ethos-u: the named modules' ops at int16 activations (TFLite's 16x8 kernels), and
    Vela still places every op, the int8/int16 borders (QUANTIZE) included, on the NPU."""
    import dgh_deploy
    from dgh_deploy.runtime.litert_runner import open_interpreter
    from dgh_deploy.targets.tflite.layer_sqnr import module_path
    from dgh_deploy.targets.tflite.target import installed_converter

    if installed_converter() != "litert-torch":
        pytest.skip("--int16-layers needs litert-torch")
    result = dgh_deploy.deploy(target="ethos-u", model="cifar_mobilenetv2", calib="noise", n_images=8, holdout=4,
                               out=str(tmp_path / "mbv2"), human_report=False, require_npu=True,
                               int16_layers="features.3")
    npu = result.report.target.facts.ethos_u.vela
    assert npu.cpu_ops == 0 and result.report.gate is not None and result.report.gate.passed, npu.cpu_fallback
    it = open_interpreter(result.artifacts["model"], delegates=False)
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    int16_modules = {module_path(tensors[int(op["outputs"][0])]["name"]).split(".conv")[0]
                     for op in it._get_ops_details()
                     if op["op_name"] != "QUANTIZE" and tensors[int(op["outputs"][0])]["dtype"].__name__ == "int16"}
    assert int16_modules and all(m.startswith("features.3") for m in int16_modules), int16_modules


@pytest.mark.slow
def test_the_anchor_free_head_runs_every_op_on_the_npu(tmp_path: Path) -> None:
    """Ultralytics' YOLOv8n from its yaml, decoding in the graph (``split``: the anchor-free head's DFL
    softmax and box decoding; the default ``maps`` file is the same graph without them): placement
    depends on the graph, not the weights, so untrained weights and noise calibration show it."""
    import dgh_deploy

    report = dgh_deploy.deploy(target="ethos-u", model="yolov8n.yaml", imgsz=64, calib="noise", n_images=8, holdout=4,
                               out=str(tmp_path / "v8"), human_report=False, require_npu=True, layout="split").report
    assert report.target.facts.output_layout() == "split"
    npu = report.target.facts.ethos_u.vela
    assert npu.cpu_ops == 0 and npu.npu_ops > 300 and report.gate is not None and report.gate.passed, \
        npu.cpu_fallback
