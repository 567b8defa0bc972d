"""Calibration images made from the model itself (DGH), and the baselines to compare with.

``make_calibration_set(model, source, ...)`` with ``source`` one of:

* ``dgh``: Data Generation for Hardware-friendly PTQ (Dikstein et al., WACV 2025), with
  MCT 2.6.1's PyTorch defaults (:class:`DGHConfig`), the whole set optimised jointly;
* ``bns``: plain BN-statistics matching, ZeroQ-style (per batch, no pipeline, no output loss);
* ``noise``: Gaussian noise in the input space, clipped to the valid pixel range;
* ``real:PATH``: real images, preprocessed as the model's input: from a folder (spread evenly over
  its sorted files), or, for ``real:DATA.yaml``, a seeded random pick from an Ultralytics data
  YAML's train split.
"""

from __future__ import annotations

import time
from pathlib import Path

from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.errors import DGHError
from dgh_deploy.generation.budget import Budget, default_budget
from dgh_deploy.generation.config import DGHConfig, bns_config, default_recipe, job_recipe
from dgh_deploy.generation.precision import PRECISIONS
from dgh_deploy.loaded_model import LoadedModel

SOURCES = ("dgh", "bns", "noise", "real:DIR", "real:DATA.yaml")


def make_calibration_set(
    model: LoadedModel,
    source: str,
    n_images: int,
    iters: int,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    checkpoint: Path | None = None,
    config: DGHConfig | None = None,
    progress: bool = True,
) -> CalibrationSet:
    """N x 3 x H x W float32 images in the model's input space, with every setting and the
    run's statistics (``time_s``, ``final_losses``, ``loss_curve``)."""
    if n_images < 1:
        raise DGHError(f"--n-images {n_images} is not a positive count", "pass --n-images 1 or more")
    if source in ("dgh", "bns"):
        from dgh_deploy.generation.engine import Generator

        cfg = config if config is not None else default_recipe(source)
        t0 = time.perf_counter()
        gen = Generator(model, n_images, iters, seed=seed, device=device, config=cfg, source=source)
        setup_s = time.perf_counter() - t0
        try:
            estimate = gen.announce() if progress else None
            out = gen.run(checkpoint=Path(checkpoint) if checkpoint is not None else None, resume=resume,
                          progress=progress)
        finally:
            gen.close()
        stats = {**out.stats, "setup_s": round(setup_s, 3)}
        if estimate is not None:  # what the console said before the run, to hold against time_s
            stats["estimated_s"] = round(estimate, 1)
        return CalibrationSet(out.images, source, out.settings, stats)
    if source == "noise":
        from dgh_deploy.generation.baselines import noise_images

        images, stats = noise_images(model, n_images, seed)
        return CalibrationSet(images, source, _plain_settings(model, source, n_images, seed), stats)
    if source.startswith("real:"):
        return _real_set(model, source, n_images, seed)
    raise DGHError(f"unknown calibration source '{source}'", f"use one of: {', '.join(SOURCES)}, or FILE.npz")


def _real_set(model: LoadedModel, source: str, n_images: int, seed: int) -> CalibrationSet:
    """``real:DIR`` (images spread over the sorted files) or ``real:DATA.yaml`` (a seeded random
    pick from the YAML's train split, as Ultralytics resolves it)."""
    from dgh_deploy.generation.baselines import is_data_yaml, real_images, real_images_from_data

    target = source.split(":", 1)[1]
    settings = _plain_settings(model, source, n_images, seed)
    if is_data_yaml(target):
        images, stats, files = real_images_from_data(model, target, n_images, seed)
        settings.update(data=target, split="train", files=files)
    else:
        images, stats, files = real_images(model, target, n_images)
        settings.update(folder=target, files=files)
    return CalibrationSet(images, source, settings, stats)


def _plain_settings(model: LoadedModel, source: str, n_images: int, seed: int) -> dict:
    return {"source": source, "n_images": n_images, "seed": seed, "imgsz": list(model.imgsz), "model": model.name}


__all__ = ["PRECISIONS", "SOURCES", "Budget", "DGHConfig", "bns_config", "default_budget", "job_recipe",
           "make_calibration_set"]
