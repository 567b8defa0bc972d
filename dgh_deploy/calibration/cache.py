"""Generated calibration sets are cached: a second target on the same model reuses them.

The key is the model's fingerprint (weights, input size, preprocessing) plus every setting
that changes the images, the generation recipe included: a changed default makes new images,
not a stale hit. Only generated sources are cached; ``noise`` and ``real:`` are cheap to remake.

Generation sits above calibration, so this module does not import it (nor the package root):
the caller, which chose the recipe, passes its hashed settings and the package version::

    from dgh_deploy import __version__
    from dgh_deploy.generation.config import default_recipe

    cached(model, source, n, iters, seed, device, make, cache_dir,
           recipe=default_recipe(source).hashed_settings(), version=__version__)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dgh_deploy.calibration.calibration_set import CalibrationSet
from dgh_deploy.loaded_model import LoadedModel

log = logging.getLogger("dgh_deploy")
CACHED_SOURCES = ("dgh", "bns")


def default_cache_dir() -> Path:
    if "DGH_DEPLOY_CACHE" in os.environ:
        return Path(os.environ["DGH_DEPLOY_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dgh-deploy"


def cache_key(model: LoadedModel, source: str, n_images: int, iters: int, seed: int, device: str, *,
              version: str, recipe: Mapping[str, Any] | None = None) -> str:
    """The cache entry's name for these settings. ``version``: dgh-deploy's ``__version__``;
    ``recipe``: the generator's hashed settings (``DGHConfig.hashed_settings()`` of the recipe it
    runs), needed for the generated sources and ignored for the others."""
    settings: dict[str, Any] = {"model": model.fingerprint(), "source": source, "n": n_images, "iters": iters,
                                "seed": seed, "device": device, "version": version}
    if source in CACHED_SOURCES:
        if recipe is None:
            raise ValueError(f"the cache key of a generated set ({source}) needs its recipe: pass recipe=")
        settings["recipe"] = dict(recipe)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def cached(model: LoadedModel, source: str, n_images: int, iters: int, seed: int, device: str,
           make: Callable[[], CalibrationSet], cache_dir: Path | None = None, *, version: str,
           recipe: Mapping[str, Any] | None = None) -> tuple[CalibrationSet, bool]:
    """Return the cached set for these settings, or make, store and return it. Second value: hit.
    ``version`` and ``recipe`` as for :func:`cache_key` (the recipe ``make`` generates with)."""
    if source not in CACHED_SOURCES:
        return make(), False
    folder = cache_dir or default_cache_dir()
    key = cache_key(model, source, n_images, iters, seed, device, version=version, recipe=recipe)
    path = folder / f"{model.name}-{source}-{key}.npz"
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
