"""The Python API; it mirrors the CLI one to one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.pipeline import DeployConfig
from dgh_deploy.targets import TargetOptions


def generate(
    model: str | None = None,
    weights: str | None = None,
    n_images: int | None = None,
    iters: int | None = None,
    imgsz: int | None = None,
    task: str | None = None,
    calib: str = "dgh",
    device: str = "cpu",
    seed: int = 0,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> CalibrationSet:
    """Generate a calibration set (``dgh-deploy generate``); saved to ``out`` when given."""
    from dgh_deploy.loading import load_model

    loaded = load_model(model, weights, task, imgsz)
    from dgh_deploy.generation import default_budget, make_calibration_set

    budget = default_budget(loaded, device)
    checkpoint = Path(f"{out}.ckpt") if out is not None else None
    calib_set = make_calibration_set(
        loaded, calib, n_images=n_images or budget.n_images, iters=iters or budget.iters, seed=seed,
        device=device, resume=resume, checkpoint=checkpoint, progress=progress,
    )
    calib_set.settings.setdefault("model", loaded.name)
    calib_set.settings.setdefault("weights", loaded.weights)
    calib_set.settings.setdefault("fingerprint", loaded.fingerprint())
    if out is not None:
        calib_set.save(out)
        if checkpoint is not None and checkpoint.exists():
            checkpoint.unlink()
    return calib_set


def deploy(target: str = "tflite-int8", **kwargs: Any) -> dict[str, Any]:
    """Run the whole job (``dgh-deploy --target ...``) and return the report.

    Keyword arguments are the fields of :class:`~dgh_deploy.pipeline.DeployConfig`; target
    options (``per_tensor``, ``io_dtype``, ``allow_float_ops``, ...) may be given flat too.
    """
    from dataclasses import fields

    from dgh_deploy.pipeline import deploy as run

    option_names = {f.name for f in fields(TargetOptions)}
    options = kwargs.pop("options", None) or TargetOptions(
        **{k: kwargs.pop(k) for k in list(kwargs) if k in option_names}
    )
    if "device" in kwargs:
        options.device = kwargs["device"]
    return run(DeployConfig(target=target, options=options, **kwargs))
