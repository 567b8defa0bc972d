"""Generated calibration sets are cached: a second target on the same model reuses them.

The key is the model's fingerprint (weights, input size, preprocessing) plus every setting
that changes the images, the generation recipe (:func:`default_recipe`) included: a changed
default makes new images, not a stale hit. Only generated sources are cached; ``noise`` and
``real:`` are cheap to remake.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from dgh_deploy import __version__
from dgh_deploy.calibration.calibration_set import CalibrationSet
from dgh_deploy.generation.config import default_recipe
from dgh_deploy.loading import LoadedModel

log = logging.getLogger("dgh_deploy")
CACHED_SOURCES = ("dgh", "bns")


def default_cache_dir() -> Path:
    if "DGH_DEPLOY_CACHE" in os.environ:
        return Path(os.environ["DGH_DEPLOY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dgh-deploy"


def cache_key(model: LoadedModel, source: str, n_images: int, iters: int, seed: int, device: str) -> str:
    settings = {"model": model.fingerprint(), "source": source, "n": n_images, "iters": iters, "seed": seed,
                "device": device, "version": __version__}
    if source in CACHED_SOURCES:
        settings["recipe"] = default_recipe(source).hashed_settings()
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def cached(model: LoadedModel, source: str, n_images: int, iters: int, seed: int, device: str,
           make: Callable[[], CalibrationSet], cache_dir: Path | None = None) -> tuple[CalibrationSet, bool]:
    """Return the cached set for these settings, or make, store and return it. Second value: hit."""
    if source not in CACHED_SOURCES:
        return make(), False
    folder = cache_dir or default_cache_dir()
    path = folder / f"{model.name}-{source}-{cache_key(model, source, n_images, iters, seed, device)}.npz"
    if path.is_file():
        try:
            hit = CalibrationSet.load(path)
            log.info("reusing cached calibration set %s", path)
            return hit, True
        except Exception:
            log.warning("cache entry %s is unreadable; generating again", path)
    calib = make()
    try:
        calib.save(path)
    except OSError as exc:  # a read-only home must not fail the job
        log.warning("could not cache the calibration set at %s (%s)", path, exc)
    return calib, False
