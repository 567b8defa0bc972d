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

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from dgh_deploy.calibration.calibration_set import CalibrationSet
from dgh_deploy.errors import DGHError
from dgh_deploy.job_checks import usable_cache_dir
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
    ``version`` and ``recipe`` as for :func:`cache_key` (the recipe ``make`` generates with).

    Two jobs on the same key do not both generate: the second waits for the first's lock, then
    reuses its entry. A corrupt entry is reported, deleted and made again, never used; a cache
    folder that cannot be written costs one warning, and the job runs uncached.
    """
    if source not in CACHED_SOURCES:
        return make(), False
    folder = usable_cache_dir(cache_dir or default_cache_dir())
    if folder is None:
        return make(), False
    key = cache_key(model, source, n_images, iters, seed, device, version=version, recipe=recipe)
    path = folder / f"{model.name}-{source}-{key}.npz"
    with entry_lock(path):
        hit = _read_entry(path)
        if hit is not None:
            log.info("reusing cached calibration set %s", path)
            return hit, True
        calib = make()
        try:
            calib.save(path)
        except DGHError as err:  # a full or read-only disk must not fail the job: the set is in memory
            log.warning("dgh-deploy: warning: could not cache the calibration set: %s", err.problem)
        return calib, False


def _read_entry(path: Path) -> CalibrationSet | None:
    """The entry at ``path``; None if absent, or if corrupt (then it is deleted, with one warning)."""
    if not path.is_file():
        return None
    try:
        return CalibrationSet.load(path)
    except DGHError as err:
        log.warning("dgh-deploy: warning: cache entry %s is corrupt (%s); deleted, generating it again",
                    path, err.problem)
        path.unlink(missing_ok=True)
        return None


@contextlib.contextmanager
def entry_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``'s entry for the time a job reads or makes it (advisory, per host)."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # no lock file possible: go on unlocked rather than fail the job
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another job is generating this calibration set (%s); waiting for it", path.name)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
