"""report.json written from the typed report is what the dict writer wrote before it.

``tests/data/reports`` holds the report.json files the dict writer (commit a7c8498, schema 1.1)
left for seven small jobs: the demo and YOLOv5n on every target that writes a file. Each job runs
again here and its report must have the same keys in the same order, the same strings, and the
same numbers (to within what another CPU's float rounding moves; exactly, on the machine that
wrote them), apart from what a run cannot repeat (times, the environment, temporary paths, peak
memory) and from the schema changes made since, each made by :func:`since_golden`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cxx import cxx_compiler

from dgh_deploy.cli import main
from dgh_deploy.reporting import validate_report
from dgh_deploy.reporting.report import REPORT_SCHEMA_VERSION
from dgh_deploy.tasks import get_task

GOLDEN = Path(__file__).parent / "data" / "reports"
REPO = Path(__file__).resolve().parents[1]
VOLATILE = ("times_s", "environment", "config.out", "config.cache_dir", "calibration.stats.peak_memory_mb")
TIMINGS = ("_s", "seconds")  # a stage's seconds, wherever a section keeps them
# Scores on real detection data: the scorer follows Ultralytics' validator pixel for pixel since the
# goldens were written (docs/design.md, "Detection metrics"), so their values moved; their keys did not.
RESCORED = ("metrics.float.", "metrics.quantized.", "metrics.drop", "metrics.device.float.",
            "metrics.device.quantized.", "metrics.device.desktop.", "metrics.device.drop",
            "metrics.device.desktop_minus_device", "metrics.device.agreement.")
# GPTQ rounding, the detectors' default since the goldens were written, moves the int8 file: its size, its
# arena, how closely it follows float (scores SQNR 13.1 -> 19.4 dB on YOLOv5n) and Vela's compilation of it
# (one op more or fewer on the NPU from run to run, 0.02% more MACs, and so its summary file's length) change;
# their keys do not.
REROUNDED = ("artifacts.model.bytes", "artifacts.vela_model.bytes", "artifacts.vela_summary.bytes",
             "target.tflite_micro.arena_bytes", "metrics.data_free.", "metrics.device.data_free.", "target.ethos_u.")
# A classifier's int8 logits reach 1.5x above the calibration set's largest since the goldens were written
# (ClassifyTask.output_headroom): the output's scale and zero point moved.
HEADROOMED = ("target.io.outputs",)
# A classifier's int8 biases are corrected on the calibration set since (tflite-int8 and ethos-u): the int8
# file follows float more closely, the demo's data-free output SQNR 28.5 -> 33.6 dB.
BIAS_CORRECTED = ("metrics.data_free.", "metrics.device.data_free.")
# 1.2: the options one target reads left config.options for that target's settings (config.target_settings).
MOVED_TO_TARGETS = ("io_dtype", "allow_float_ops", "act_symmetric", "power_of_two", "bias_correction",
                    "weight_rounding")


def since_golden(old: dict[str, Any]) -> dict[str, Any]:
    """A 1.1 report as the current schema writes the same job, less 1.3's additions (``contract``,
    ``layers``, the ``layer_sqnr.csv`` artifact and its time, ``tflite_micro.kernels``: checked on
    their own below). 1.2 took
    :data:`MOVED_TO_TARGETS` out of config.options (none of the seven jobs gives one, so none lands
    in target_settings). The detector goldens' split layout, the default when they were written, is
    asked for by name since maps became tflite-int8's: it lands in target_settings. So is their fp32
    generation, since auto became the default: it lands in config, after calib. The BN kernels'
    statistics land after ``cuda_graph``. The targets that write integer outputs say their task's
    output headroom (the classifier demo's 1.5), tflite-int8 and ethos-u after ``project_ranges``, and
    a detector's that its int8 biases were not corrected, after the converter's keys (a classifier's
    correction is checked on its own: :func:`check_bias_correction`)."""
    new = json.loads(json.dumps(old))
    config, new["config"] = new["config"], {}
    for key, value in config.items():
        new["config"][key] = value
        if key == "calib":
            new["config"]["precision"] = "fp32"
    new["schema_version"] = REPORT_SCHEMA_VERSION  # 1.4 added values (BGR, stretch), no keys
    for key in MOVED_TO_TARGETS:
        new["config"]["options"].pop(key)
    if old["model"]["task"] == "detect" and old["target"]["name"] != "tensorrt-int8":
        new["config"]["target_settings"] = {"layout": "split"}
    # The generation statistics say how the BN layers ran since they are compiled loops on a CPU:
    # the demo's 10 ReLUs after a BN layer are folded in; YOLOv5n's SiLUs stay (fx cannot trace it).
    stats, new["calibration"]["stats"] = new["calibration"]["stats"], {}
    for key, value in stats.items():
        new["calibration"]["stats"][key] = value
        if key == "cuda_graph":
            new["calibration"]["stats"]["bn_kernels"] = "compiled" if cxx_compiler() else "eager"
            new["calibration"]["stats"]["fused_relus"] = 10 if old["model"]["task"] == "classify" else 0
    headroom = get_task(old["model"]["task"]).output_headroom
    if old["target"]["name"] == "sim":
        new["target"]["output_headroom"] = headroom
    elif "project_ranges" in old["target"]:
        target, new["target"] = new["target"], {}
        for key, value in target.items():
            if key == "tflite_micro" and old["model"]["task"] == "detect":
                new["target"]["bias_correction"] = "off"
            new["target"][key] = value
            if key == "project_ranges":
                new["target"]["output_headroom"] = headroom
    return new


def check_contract(contract: dict[str, Any], report: dict[str, Any]) -> None:
    """1.3's input contract agrees with the rest of the report: the file, its I/O, the preprocessing."""
    assert contract["file"] == report["artifacts"]["model"]["path"]
    io = report["target"].get("io")
    if io:  # a .tflite file: the contract's tensors are the file's own
        assert {k: contract["input"][k] for k in io["input"] if k in contract["input"]} == {
            k: v for k, v in io["input"].items() if k in contract["input"]}
        assert [o["shape"] for o in contract["outputs"]] == [o["shape"] for o in io["outputs"]]
        assert contract["layout"] == "NHWC" and any("round(x / " in step for step in contract["steps"])
    else:  # an ONNX or PyTorch model: float NCHW in
        assert contract["layout"] == "NCHW" and contract["input"]["dtype"] == "float32"
    letterbox = report["model"]["task"] == "detect"
    assert contract["resize"] == ("letterbox" if letterbox else "center_crop")
    assert all(o["meaning"] for o in contract["outputs"])


def check_kernels(kernels: dict[str, Any]) -> None:
    """1.3's view of where LiteRT's and TFLite Micro's kernels part, op by op, on one image."""
    assert kernels["images"] == 1 and 0 <= kernels["ops_differing"] <= kernels["ops"]
    added = [k["added_rms_steps"] for k in kernels["adding_most"]]
    assert added == sorted(added, reverse=True) and all(k["max_steps"] >= 1 for k in kernels["adding_most"])
    if kernels["ops_differing"]:
        assert kernels["first"]["index"] <= min(k["index"] for k in kernels["adding_most"])


def check_gptq(rounding: dict[str, Any]) -> None:
    """GPTQ became the detectors' weight rounding on tflite-int8 and ethos-u after the goldens were
    written: its record, checked on its own (the rest of the report is the golden's)."""
    assert rounding["method"] == "gptq" and rounding["layers"] > 0 and rounding["seconds"] >= 0


def check_bias_correction(done: dict[str, Any]) -> None:
    """Bias correction became the classifiers' default on tflite-int8 and ethos-u after the goldens were
    written: its record, checked on its own (the rest of the report is the golden's)."""
    assert done["ops"] > 0 and done["levels"] > 0 and done["images"] > 0 and done["mean_shift_steps"] >= 0


def check_layers(layers: dict[str, Any], table: dict[str, Any], out: Path) -> None:
    """1.3's per-layer diagnosis: the weakest layers, lowest first, and every tensor in the CSV beside it."""
    assert table["path"] == layers["table"] == "layer_sqnr.csv" and (out / table["path"]).is_file()
    rows = (out / table["path"]).read_text().splitlines()
    assert len(rows) == layers["tensors"] + 1 > len(layers["worst"]) > 0
    worst = [w["sqnr_db"] for w in layers["worst"]]
    assert worst == sorted(worst) and worst[0] <= layers["median_db"] < 100  # noise may exceed signal: < 0 dB

# The goldens were generated in fp32, the default then: a CPU with native bf16 would now generate in bf16.
DEMO = ["--n-images", "16", "--iters", "4", "--holdout", "8", "--val-data", "{assets}/cifar10/test",
        "--val-limit", "64", "--seed", "3", "--precision", "fp32"]
YOLO = ["--model", "yolov5n", "--weights", "{assets}/yolov5n/yolov5n-coco-v6.1.pt", "--imgsz", "160",
        "--n-images", "8", "--iters", "2", "--holdout", "8", "--val-data", "{assets}/coco128/coco128.yaml",
        "--val-limit", "8", "--seed", "3", "--precision", "fp32"]
JOBS = {
    "demo_tflite-int8": ["--target", "tflite-int8", *DEMO, "--max-drop", "50"],
    "demo_ethos-u": ["--target", "ethos-u", *DEMO, "--require-npu"],
    "demo_tensorrt-int8": ["--target", "tensorrt-int8", *DEMO],
    "demo_sim": ["--target", "sim", *DEMO, "--bits", "W4A8"],
    # The goldens predate the maps layout (the tflite default since): they were written with the split one.
    "yolov5n_tflite-int8": ["--target", "tflite-int8", *YOLO, "--layout", "split"],
    "yolov5n_tensorrt-int8": ["--target", "tensorrt-int8", *YOLO],
    "yolov5n_ethos-u": ["--target", "ethos-u", *YOLO, "--layout", "split"],
}


def leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every scalar of a JSON value with its path ("metrics.float.top1", "artifacts.model.bytes")."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from leaves(item, f"{path}[{i}]")
    else:
        yield path, value


def differences(old: dict[str, Any], new: dict[str, Any], ignored: tuple[str, ...] = ()) -> list[str]:
    """Where ``new`` is not ``old``: a key added, dropped or moved, or a value changed (``ignored``:
    paths whose values may change)."""
    a, b = list(leaves(old)), list(leaves(new))
    if [k for k, _ in a] != [k for k, _ in b]:
        return [f"keys differ: only old {sorted({k for k, _ in a} - {k for k, _ in b})}, "
                f"only new {sorted({k for k, _ in b} - {k for k, _ in a})} (or their order)"]
    found = []
    for (key, x), (_, y) in zip(a, b, strict=True):
        if key.startswith(VOLATILE + ignored) or re.sub(r"(\[\d+\])+$", "", key).endswith(TIMINGS) or _same(key, x, y):
            continue
        found.append(f"{key}: {x!r} -> {y!r}")
    return found


def _same(key: str, x: Any, y: Any) -> bool:
    # Another CPU's rounding also moves what a job writes as decimal text (the sim target's scales
    # JSON: a digit more or fewer, 23262 -> 23267 bytes on an AVX-512 Xeon) and can flip one of the 8
    # held-out images (12.5 points of agreement).
    if key.endswith(".bytes") and isinstance(x, int) and isinstance(y, int):
        return math.isclose(x, y, rel_tol=1e-3)
    if key.endswith("agreement") and isinstance(y, (int, float)):
        return abs(x - y) <= 100 / 8
    if isinstance(x, float) or isinstance(y, float):
        # Exact on the machine that wrote them; another CPU's float rounding moves a metric a little.
        return isinstance(y, (int, float)) and math.isclose(x, y, rel_tol=0.05, abs_tol=5.0)
    return type(x) is type(y) and x == y


def normalised(report: dict[str, Any], assets: Path) -> dict[str, Any]:
    text = json.dumps(report).replace(str(assets), "{assets}").replace(str(REPO), "{repo}")
    return json.loads(text)


def test_the_comparison_sees_a_moved_key_and_a_changed_value() -> None:
    old = {"a": 1, "b": {"c": "x", "d": 2.0}, "times_s": {"e": 1.0}}
    assert differences(old, {"a": 1, "b": {"c": "x", "d": 2.0}, "times_s": {"e": 9.0}}) == []
    assert differences(old, {"b": {"c": "x", "d": 2.0}, "a": 1, "times_s": {"e": 1.0}})[0].startswith("keys differ")
    assert differences(old, {"a": 1, "b": {"c": "y", "d": 2.0}, "times_s": {"e": 1.0}}) == ["b.c: 'x' -> 'y'"]
    assert differences(old, {"a": 2, "b": {"c": "x", "d": 2.0}, "times_s": {"e": 1.0}}) == ["a: 1 -> 2"]
    # a stage's seconds are a timing wherever they sit, in a list too
    assert differences({"stats": {"stage_s": [0.3]}}, {"stats": {"stage_s": [9.2]}}) == []
    # another CPU's rounding: a few bytes of decimal text, one of 8 images; not more
    assert differences({"m": {"bytes": 23262, "agreement": 100.0}}, {"m": {"bytes": 23267, "agreement": 87.5}}) == []
    moved = {"m": {"bytes": 23362, "agreement": 75.0}}
    assert len(differences({"m": {"bytes": 23262, "agreement": 100.0}}, moved)) == 2


@pytest.mark.parametrize("name", [
    *[n for n in JOBS if n.startswith("demo")],
    *[pytest.param(n, marks=pytest.mark.slow) for n in JOBS if n.startswith("yolov5n")],
])
def test_the_typed_report_is_written_as_the_dict_was(name: str, assets: Path, tmp_path: Path) -> None:
    from dgh_deploy.targets.tflite.target import installed_converter

    old = json.loads((GOLDEN / f"{name}.json").read_text())
    converter = old["target"].get("converter")
    if converter and converter != installed_converter():
        pytest.skip(f"written with --converter {converter}; this venv converts with {installed_converter()}")
    args = [a.replace("{assets}", str(assets)) for a in JOBS[name]]
    out = tmp_path / "out"
    code = main([*args, "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--quiet", "--no-human-report",
                 "--threads", "1"])
    assert code == 0
    new = json.loads((out / "report.json").read_text())
    validate_report(new)
    check_contract(new.pop("contract"), new)
    check_layers(new.pop("layers"), new["artifacts"].pop("layer_sqnr"), out)
    assert new["times_s"].pop("layer_diagnosis") >= 0
    if "arena_bytes" in new["target"].get("tflite_micro", {}):  # the file ran on TFLite Micro
        check_kernels(new["target"]["tflite_micro"].pop("kernels"))
    if old["model"]["task"] == "detect" and "export_rewrites" in new["target"]:
        check_gptq(new["target"]["export_rewrites"].pop("weight_rounding"))
    if isinstance(new["target"].get("bias_correction"), dict):
        check_bias_correction(new["target"].pop("bias_correction"))
        assert new["times_s"].pop("bias_correction") >= 0
    rescored = RESCORED + REROUNDED if old["model"]["task"] == "detect" else HEADROOMED + BIAS_CORRECTED
    found = differences(since_golden(old), normalised(new, assets), rescored)
    assert found == [], "\n".join(found)
