"""The whole job: load, generate calibration data, build for the target, verify, report."""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dgh_deploy.artifacts import staging_dir, write_json
from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.errors import DGHError, QualityGateFailed
from dgh_deploy.loading import LoadedModel, load_model
from dgh_deploy.runtime.base import TorchRunner
from dgh_deploy.targets import TargetOptions, get_target
from dgh_deploy.tasks import get_task

log = logging.getLogger("dgh_deploy")
REPORT_SCHEMA_VERSION = "1.0"


@dataclass
class DeployConfig:
    target: str = "tflite-int8"
    model: str | None = None
    weights: str | None = None
    task: str | None = None
    imgsz: int | None = None
    calib: str = "dgh"  # dgh | bns | noise | real:PATH | FILE.npz
    n_images: int | None = None  # None: the task's default for the device
    iters: int | None = None
    holdout: int | None = None  # images held out of calibration for the data-free check
    val_data: str | None = None
    val_limit: int | None = None
    out: str = "out/dgh-deploy"
    device: str = "cpu"
    seed: int = 0
    resume: bool = False
    max_drop: float | None = None
    options: TargetOptions = field(default_factory=TargetOptions)


def deploy(config: DeployConfig) -> dict[str, Any]:
    """Run the job and return the report (also written to ``OUT/report.json``)."""
    times: dict[str, float] = {}
    target = get_target(config.target)
    target.options = config.options
    missing = target.missing_requirements()
    if missing:
        raise DGHError(
            f"target '{target.name}' needs the Python packages {', '.join(missing)}",
            target.install_hint or "run ./install.sh",
        )

    t0 = time.perf_counter()
    model = load_model(config.model, config.weights, config.task, config.imgsz)
    task = get_task(model.task)
    times["load"] = time.perf_counter() - t0

    from dgh_deploy.generation import default_budget, make_calibration_set

    budget = default_budget(model, config.device)
    n_images = config.n_images or budget.n_images
    iters = config.iters or budget.iters
    holdout = config.holdout if config.holdout is not None else max(8, n_images // 8)

    t0 = time.perf_counter()
    if config.calib.endswith(".npz"):
        full = CalibrationSet.load(config.calib)
    else:
        full = make_calibration_set(
            model, config.calib, n_images=n_images + holdout, iters=iters, seed=config.seed,
            device=config.device, resume=config.resume,
            checkpoint=Path(config.out) / ".generation.ckpt" if config.resume or config.calib == "dgh" else None,
        )
    full.check_fits(model.imgsz)
    calib, held = full.split(holdout)
    times["generation"] = time.perf_counter() - t0

    with staging_dir(config.out) as stage:
        result = target.build(model, calib, stage)
        times.update(result.timings)

        t0 = time.perf_counter()
        verification = verify(model, task, result.runner, held, config)
        times["verification"] = time.perf_counter() - t0

        report = {
            "schema_version": REPORT_SCHEMA_VERSION,
            "model": {"name": model.name, "weights": model.weights, "task": model.task,
                      "imgsz": list(model.imgsz), "fingerprint": model.fingerprint()},
            "target": {"name": target.name, "runtime": target.runtime,
                       "constraints": target.constraints.as_dict(), **result.info},
            "calibration": {"source": calib.source, "images": len(calib), "held_out": len(held) if held else 0,
                            "settings": calib.settings, "stats": calib.stats},
            "artifacts": {role: {"path": p.name, "bytes": p.stat().st_size} for role, p in result.artifacts.items()},
            "metrics": verification,
            "times_s": {k: round(v, 3) for k, v in times.items()},
            "environment": environment(),
            "config": _config_dict(config),
        }
        write_json(stage / "report.json", report)
    gate(report, config.max_drop)
    return report


def verify(model: LoadedModel, task: Any, runner: Any, held: CalibrationSet | None,
           config: DeployConfig) -> dict[str, Any]:
    """Float against quantized: on real labelled data when given, and data-free on held-out images."""
    out: dict[str, Any] = {"metric": task.metric}
    float_runner = TorchRunner(model.module)
    if held is not None and len(held):
        ref = float_runner.infer_all(held.images)
        cand = runner.infer_all(held.images)
        out["data_free"] = task.agreement(ref, cand)
    if config.val_data:
        f = task.evaluate(float_runner, model, config.val_data, config.val_limit)
        q = task.evaluate(runner, model, config.val_data, config.val_limit)
        out["float"] = f
        out["quantized"] = q
        out["drop"] = round(f[task.metric] - q[task.metric], 4)
    return out


def gate(report: dict[str, Any], max_drop: float | None) -> None:
    if max_drop is None:
        return
    m = report["metrics"]
    if "drop" not in m:
        raise DGHError("--max-drop needs real labelled data to measure a drop", "pass --val-data")
    if m["drop"] > max_drop:
        raise QualityGateFailed(
            f"FAIL: {m['metric']} dropped {m['drop']:.2f} points "
            f"({m['float'][m['metric']]:.2f} float -> {m['quantized'][m['metric']]:.2f} quantized), "
            f"more than --max-drop {max_drop}",
            "calibrate with more or better images, or relax the threshold",
        )


def environment() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "onnx", "onnxruntime", "onnx2tf", "tensorflow", "ai-edge-litert", "tensorrt",
                "polygraphy", "ultralytics", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "versions": versions}


def _config_dict(config: DeployConfig) -> dict[str, Any]:
    d = asdict(config)
    return {k: v for k, v in d.items() if v is not None}


