"""The whole job: load, generate calibration data, build for the target, verify, report."""

from __future__ import annotations

import contextlib
import logging
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dgh_deploy import __version__
from dgh_deploy.artifacts import check_output_folder, staging_dir, write_json
from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.calibration.cache import cached
from dgh_deploy.errors import DGHError, QualityGateFailed, exc_reason
from dgh_deploy.generation.budget import Budget, default_budget
from dgh_deploy.generation.config import job_recipe
from dgh_deploy.generation.preflight import check_device
from dgh_deploy.io_contract import io_contract
from dgh_deploy.job_checks import (
    check_calibration_source,
    check_exists,
    check_free_space,
    check_numbers,
    check_val_data_yaml,
    check_writable_folder,
    job_bytes,
)
from dgh_deploy.loaded_model import LoadedModel
from dgh_deploy.loading import image_size, load_model, model_label
from dgh_deploy.progress import progress_bar
from dgh_deploy.reporting import write_human_report, write_junit
from dgh_deploy.reporting.report import (
    ArtifactEntry,
    BudgetEntry,
    CalibrationEntry,
    LayerDiagnosis,
    Metrics,
    ModelEntry,
    Report,
    TargetEntry,
)
from dgh_deploy.reporting.section import output_layout
from dgh_deploy.runtime.base import TorchRunner
from dgh_deploy.targets import DEFAULT_TARGET, BuildResult, Target, TargetOptions, get_target
from dgh_deploy.tasks import get_task
from dgh_deploy.verification.gate import gate_verdict
from dgh_deploy.verification.layers import LAYER_TABLE, diagnosis_images, summarise, write_table
from dgh_deploy.verification.scoring import verify
from dgh_deploy.versions import installed_versions

log = logging.getLogger("dgh_deploy")


@dataclass
class DeployConfig:
    target: str = DEFAULT_TARGET
    model: str | Any = None  # a path or name, or the model object (nn.Module, Ultralytics YOLO)
    weights: str | None = None
    task: str | None = None
    imgsz: int | tuple[int, int] | None = None  # (h, w): a letterboxed rectangle (detectors)
    calib: str = "dgh"  # dgh | bns | noise | real:PATH | FILE.npz
    precision: str | None = None  # fp32 | bf16 | auto for generation; None: DGHConfig's default
    n_images: int | None = None  # None: the task's default for the device and input size
    iters: int | None = None
    scales: tuple[tuple[float, float], ...] | None = None  # coarse to fine (generation/scales.py); None: the default
    holdout: int | None = None  # images held out of calibration for the data-free check
    val_data: str | None = None
    val_limit: int | None = None
    out: str = "out/dgh-deploy"
    device: str = "cpu"
    seed: int = 0
    resume: bool = False
    max_drop: float | None = None
    junit: str | None = None  # write a JUnit XML verdict here
    use_cache: bool = True
    cache_dir: str | None = None
    human_report: bool = True  # report.md with pictures beside report.json
    progress: bool = True  # progress bar while generating (the CLI's --quiet turns it off)
    options: TargetOptions = field(default_factory=TargetOptions)
    target_settings: dict[str, Any] = field(default_factory=dict)  # the target's own (see Target.flags)


def default_holdout(n_images: int) -> int:
    """Images generated beyond the ``n_images`` calibration ones, held out for the data-free check."""
    return max(8, n_images // 8)


def deploy(config: DeployConfig) -> Report:
    """Run the job and return the report (also written to ``OUT/report.json``).

    Raises :class:`DGHError` for bad input and :class:`QualityGateFailed` (after writing every
    artifact) when ``max_drop`` is exceeded; with ``junit`` set, either outcome is also written
    as a JUnit verdict.
    """
    try:
        report = _deploy(config)
    except DGHError as err:
        if config.junit and not isinstance(err, QualityGateFailed):
            with contextlib.suppress(DGHError):  # an unwritable --junit must not hide the first error
                write_junit(config.junit, None, config.max_drop, error=str(err))
        raise
    return report


def _deploy(config: DeployConfig) -> Report:
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    target, model, task = _checked_inputs(config)
    times["load"] = time.perf_counter() - t0

    # The target's own check of the model (a float conversion: seconds) runs before minutes of
    # generation, but after a calibration file's checks, which take less.
    from_file = config.calib.endswith(".npz")
    early = None
    if not from_file:
        times["preflight"], early = _preflight(target, model)
    t0 = time.perf_counter()
    full, hit = _calibration_images(config, model)
    check_calibration_images(full, model)
    calib, held = full.split(_holdout(config, model))
    times["generation"] = time.perf_counter() - t0
    if from_file:
        times["preflight"], early = _preflight(target, model)

    with staging_dir(config.out) as stage:
        result = target.build(model, calib, stage, early)
        times.update(result.timings)

        t0 = time.perf_counter()
        metrics = verify(model, task, result.runner, held, config.val_data, config.val_limit, config.progress)
        if config.val_data and output_layout(result.info) == "ultralytics":  # yolo val's own score beside ours
            from dgh_deploy.verification.ultralytics_val import compare_with_ultralytics

            metrics.validator = compare_with_ultralytics(
                model, result.runner, result.artifacts["model"], config.val_data, config.val_limit)
        times["verification"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        layers = layer_diagnosis(target, model, result, held, stage, config.progress)
        times["layer_diagnosis"] = time.perf_counter() - t0

        report = build_report(config, model, target, result, calib, held, hit, metrics, times)
        if layers is not None:
            layers.advice = target.repair_advice(metrics.drop, layers.noisiest_modules)
        report.layers = layers
        report.contract = io_contract(model, result.artifacts["model"].name, result.runner.io_details(),
                                      task.output_meanings(model, output_layout(result.info)))
        verdict = gate_verdict(report.metrics, config.max_drop, target.gate_checks(report))
        if verdict is not None:
            report.gate = verdict.entry(config.max_drop)
        write_json(stage / "report.json", report.to_json())
        if config.human_report:
            real = task.sample_inputs(model, config.val_data, 256) if config.val_data else None
            write_human_report(stage, report, model, calib, real, target.markdown_lines(report))
    if config.junit:
        write_junit(config.junit, report, config.max_drop)
    if verdict is not None and not verdict.passed:
        raise QualityGateFailed(verdict.verdict, verdict.fix)
    return report


def layer_diagnosis(target: Target, model: LoadedModel, result: BuildResult, held: CalibrationSet | None,
                    stage: Path, progress: bool) -> LayerDiagnosis | None:
    """Each layer of the built model against float on held-out images: the report's weakest layers and
    ``layer_sqnr.csv``. A diagnosis, not a check: a failure is reported, and the job goes on."""
    if held is None or not len(held):
        return None
    n = diagnosis_images(len(held), model.imgsz)
    bar = progress_bar(1, f"comparing layers on {n} held-out images", progress)
    try:
        rows = target.layer_errors(model, result, held.images[:n])
    except Exception as exc:  # any converter or runtime failure: say why, keep the job's result
        log.warning("per-layer diagnosis failed: %s", exc_reason(exc, 200))
        return LayerDiagnosis(n, target.layer_runtime, 0, "", None, [], skipped=exc_reason(exc, 200))
    finally:
        if bar is not None:
            bar.update(1)
            bar.close()
    if rows is None:
        return LayerDiagnosis(0, "", 0, "", None, [], skipped=f"{target.name} cannot see inside its model")
    table = write_table(rows, stage / LAYER_TABLE)
    result.artifacts["layer_sqnr"] = table
    return summarise(rows, n, target.layer_runtime, table.name)


def _checked_inputs(config: DeployConfig) -> tuple[Target, LoadedModel, Any]:
    """The target, the model and its task, every option checked: bad input fails here, in seconds."""
    check_config(config)
    target = get_target(config.target, **config.target_settings)
    target.options = config.options
    target.progress = config.progress
    missing = target.missing_requirements()
    if missing:
        raise DGHError(
            f"target '{target.name}' needs the Python packages {', '.join(missing)}",
            target.install_hint_for(missing) or "run ./install.sh",
        )
    model = load_model(config.model, config.weights, config.task, config.imgsz)
    target.check_options(model)  # before minutes of generation, not after
    model = target.deploy_form(model)
    task = get_task(model.task, model)
    if config.val_data:
        task.check_val_data(config.val_data)
    _check_disk(config, model)
    return target, model, task


def _preflight(target: Target, model: LoadedModel) -> tuple[float, Any]:
    """The target's check before generation: its seconds, and what it hands to the build."""
    t0 = time.perf_counter()
    early = target.preflight(model)
    return time.perf_counter() - t0, early


def check_config(config: DeployConfig) -> None:
    """Numbers, paths and the output folder, before anything loads."""
    size = image_size(config.imgsz)
    imgsz = min(size) if size else None
    check_numbers({"n_images": config.n_images, "iters": config.iters, "imgsz": imgsz, "holdout": config.holdout,
                   "val_limit": config.val_limit, "threads": config.options.threads, "seed": config.seed,
                   "max_drop": config.max_drop})
    if config.max_drop is not None and not config.val_data:
        raise DGHError("--max-drop needs real labelled data to measure a drop", "pass --val-data")
    check_calibration_source(config.calib)
    if not config.calib.endswith(".npz"):
        check_device(config.device)
        job_recipe(config.calib, config.precision, config.device)  # bf16 where the device lacks it: refused now
    if config.val_data:
        check_exists(config.val_data, "--val-data")
        check_val_data_yaml(config.val_data)
    check_output_folder(config.out)
    check_writable_folder(config.out, "--out")
    if config.junit:
        check_writable_folder(Path(config.junit).parent, "--junit")


def _check_disk(config: DeployConfig, model: LoadedModel) -> None:
    """Room for the generation checkpoint beside ``--out`` and the artifacts in it."""
    n_images = _budget(config, model).n_images
    generated = 0 if config.calib.endswith(".npz") else n_images + _holdout(config, model)
    images, artifacts = job_bytes(generated, model.imgsz, sum(p.numel() for p in model.module.parameters()))
    check_free_space(config.out, images + artifacts, "the calibration set and the artifacts", "--out")


def _budget(config: DeployConfig, model: LoadedModel) -> Budget:
    """Calibration images, iterations and resolution schedule: the user's, else the default for
    the model's task and input size on the device."""
    budget = default_budget(model, config.device)
    given = {k: v for k, v in (("n_images", config.n_images), ("iters", config.iters), ("scales", config.scales))
             if v is not None}
    if not given:
        return budget
    flags = ", ".join("--" + k.replace("_", "-") for k in given)
    return replace(budget, **given, basis=f"{flags} as given; otherwise {budget.basis}")


def _holdout(config: DeployConfig, model: LoadedModel) -> int:
    n_images = _budget(config, model).n_images
    return config.holdout if config.holdout is not None else default_holdout(n_images)


def _calibration_images(config: DeployConfig, model: LoadedModel) -> tuple[CalibrationSet, bool]:
    """The calibration images plus the held-out ones: from a file, the cache, or generated now.

    Returns the set and whether it came from the cache.
    """
    from dgh_deploy.generation import make_calibration_set

    if config.calib.endswith(".npz"):
        return CalibrationSet.load(config.calib), False
    budget = _budget(config, model)
    n_images, iters = budget.n_images, budget.iters
    total = n_images + _holdout(config, model)
    checkpoint = Path(config.out).with_name(Path(config.out).name + ".generation.ckpt")
    # One recipe, precision resolved (auto -> fp32 or bf16), makes the images and the cache key.
    recipe = job_recipe(config.calib, config.precision, config.device, budget.scales, model.module)
    if _generates(config):
        log.info("generation budget: %s + %d held out (%s)", budget.describe(), total - n_images, budget.basis)

    def make() -> CalibrationSet:
        return make_calibration_set(
            model, config.calib, n_images=total, iters=iters, seed=config.seed,
            device=config.device, resume=config.resume, checkpoint=checkpoint, config=recipe,
            progress=config.progress,
        )

    hit = False
    if config.use_cache:
        full, hit = cached(model, config.calib, total, iters, config.seed, config.device, make,
                           Path(config.cache_dir) if config.cache_dir else None,
                           recipe=recipe.hashed_settings(), version=__version__)
    else:
        full = make()
    checkpoint.unlink(missing_ok=True)
    return full, hit


def check_calibration_images(calib: CalibrationSet, model: LoadedModel, probe: int = 8) -> None:
    """The set fits the model, holds finite pixels, and the model's outputs on it are finite."""
    calib.check_fits(model.imgsz)
    if not np.isfinite(calib.images).all():
        raise DGHError("the calibration images hold NaN or Inf values",
                       "generate the set again (--no-cache), or pass another --calib")
    outputs = TorchRunner(model.module).infer_all(calib.images[:probe])
    if not all(np.isfinite(o).all() for o in outputs):
        raise DGHError(f"the model's outputs are NaN or Inf on the calibration images ('{model.name}')",
                       "check the weights for extreme values, or calibrate with --calib real:PATH to compare")


def build_report(config: DeployConfig, model: LoadedModel, target: Target, result: BuildResult,
                 calib: CalibrationSet, held: CalibrationSet | None, cached_set: bool,
                 metrics: Metrics, times: dict[str, float]) -> Report:
    """The job's report (written as report.json; the schema is ``dgh_deploy/reporting/report.schema.json``)."""
    return Report(
        model=ModelEntry(model.name, model.weights, model.task, list(model.imgsz), model.fingerprint()),
        target=TargetEntry(target.name, target.runtime, target.constraints.as_dict(), result.info),
        calibration=CalibrationEntry(calib.source, len(calib), len(held) if held else 0, cached_set, calib.settings,
                                     calib.stats, _budget_entry(config, model) if _generates(config) else None),
        artifacts={role: ArtifactEntry(p.name, p.stat().st_size) for role, p in result.artifacts.items()},
        metrics=metrics,
        times_s={k: round(v, 3) for k, v in times.items()},
        environment=environment(),
        config=_config_dict(config),
    )


def _generates(config: DeployConfig) -> bool:
    """The job optimises its images (DGH or BNS), so a generation budget applies."""
    return config.calib in ("dgh", "bns")


def _budget_entry(config: DeployConfig, model: LoadedModel) -> BudgetEntry:
    """The generation budget as the report states it: what ran, and why that much."""
    budget = _budget(config, model)
    return BudgetEntry(budget.n_images, budget.iters, [list(s) for s in budget.scales], budget.basis)


def environment() -> dict[str, Any]:
    versions = installed_versions(("torch", "onnx", "onnxruntime", "onnx2tf", "tensorflow", "litert-torch",
                                   "ai-edge-quantizer", "ai-edge-litert", "tensorrt", "polygraphy", "ultralytics",
                                   "numpy"))
    return {"python": platform.python_version(), "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(), "versions": versions}


def _config_dict(config: DeployConfig) -> dict[str, Any]:
    # A model object is named, not copied into the report (asdict would deep-copy it).
    d = asdict(replace(config, model=model_label(config.model) if config.model is not None else None))
    return {k: v for k, v in d.items() if v is not None}


