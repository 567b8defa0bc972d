"""DGH generation over several processes, launched by ``torchrun``.

Each rank optimises a contiguous block of the image set (its shard) and keeps that block's
optimizer state. Every step the ranks all-reduce one float64 vector: the per-layer BN-input
sums (:meth:`StatSums.flatten`) and the output-stretch sum. Every rank then computes the loss
of the *whole* set's statistics, so every image gets the gradient a single process would give
it, and the loss, hence the learning-rate schedule, is the same number on every rank.

Randomness depends on the global image index only (:mod:`draws`) and the sums are float64
totals of per-image sums (:mod:`stats`), so nothing depends on the split: the same seed gives
the same images whatever the number of processes (bit for bit on CPU, where a convolution of
a batch computes each image as it would alone, except for a batch of one image). Checkpoints
hold the whole set (gathered to rank 0, which alone writes files): a run resumes from one with
any number of processes, including one.

Backends: gloo on CPU; NCCL on CUDA (``cuda:LOCAL_RANK``), with a gloo side group for the
CPU gathers of checkpoints and results. Collectives have a timeout, and a failed collective
(a rank died, was killed or hangs) becomes a one-line :class:`DGHError` naming ``--resume``.

Layers: this module is the torchrun driver, above the engine: it joins the job, builds the
:class:`~dgh_deploy.generation.collective.Collective` (the shards and the collectives, below the
engine) and runs a :class:`~dgh_deploy.generation.engine.Generator` on this rank's shard.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.errors import DGHError
from dgh_deploy.generation.collective import Collective, backend_reason
from dgh_deploy.generation.config import DGHConfig
from dgh_deploy.generation.engine import Generator
from dgh_deploy.generation.preflight import check_device
from dgh_deploy.loaded_model import LoadedModel

log = logging.getLogger("dgh_deploy")

TIMEOUT_ENV = "DGH_DIST_TIMEOUT_S"


@dataclass(frozen=True)
class DistConfig:
    # How long a rank waits in a collective before it declares the others lost. Long enough
    # for rank 0 to write a large checkpoint while the others wait; short enough that a hung
    # rank does not hold the job for torch's default of 30 minutes.
    timeout_s: float = 300.0

    @classmethod
    def from_env(cls) -> DistConfig:
        raw = os.environ.get(TIMEOUT_ENV)
        if raw is None:
            return cls()
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if value <= 0:
            raise DGHError(f"{TIMEOUT_ENV}={raw!r} is not a positive number of seconds",
                           f"set {TIMEOUT_ENV} to e.g. 300, or unset it")
        return cls(timeout_s=value)


def world_size_from_env() -> int:
    """WORLD_SIZE as torchrun sets it; 1 when not launched by torchrun."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError as exc:
        raise DGHError(f"WORLD_SIZE={raw!r} is not a process count",
                       "launch with torchrun, or unset WORLD_SIZE") from exc


def requested() -> bool:
    return world_size_from_env() > 1


def init_from_env(device: str, config: DistConfig | None = None) -> Collective:
    """Join the torchrun job this process belongs to (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*)."""
    config = config or DistConfig.from_env()
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError) as exc:
        raise DGHError("WORLD_SIZE is set but RANK is missing or not a number",
                       "launch with torchrun --nproc-per-node N, which sets both") from exc
    dev = check_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index >= torch.cuda.device_count():
            raise DGHError(f"rank {rank} (LOCAL_RANK {local_rank}) wants {dev} but this node has "
                           f"{torch.cuda.device_count()} GPU(s)", "use --nproc-per-node at most the GPUs per node")
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    timeout = timedelta(seconds=config.timeout_s)
    try:
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
        side = dist.new_group(backend="gloo", timeout=timeout) if backend == "nccl" else None
    except (RuntimeError, ValueError) as exc:
        raise DGHError(f"rank {rank} of {world} could not join the torchrun job ({backend}: {backend_reason(exc)})",
                       "check MASTER_ADDR/MASTER_PORT (or --rdzv-endpoint) and that every node can reach it") from exc
    return Collective(rank, world, dev, side)


def generate(model: LoadedModel, source: str, n_images: int, iters: int, seed: int = 0, device: str = "cpu",
             resume: bool = False, checkpoint: Path | None = None, config: DGHConfig | None = None,
             progress: bool = True) -> CalibrationSet | None:
    """:func:`make_calibration_set` for a torchrun job: the whole set on rank 0, None elsewhere."""
    if source != "dgh":
        raise DGHError(f"torchrun runs DGH generation only, not --calib {source}",
                       "run --calib bns/noise/real:PATH without torchrun (they are per batch or instant)")
    if n_images < world_size_from_env():
        raise DGHError(f"{n_images} images cannot be shared among {world_size_from_env()} processes",
                       "pass --n-images at least the number of processes, or fewer processes")
    ctx = init_from_env(device)
    previous = signal.signal(signal.SIGTERM, ctx.on_stop_signal)
    try:
        t0 = time.perf_counter()
        gen = Generator(model, n_images, iters, seed=seed, device=str(ctx.device), config=config or DGHConfig(),
                        source=source, dist=ctx)
        setup_s = time.perf_counter() - t0
        try:
            if progress:
                gen.announce()
            out = gen.run(checkpoint=checkpoint, resume=resume, progress=progress)
        finally:
            gen.close()
        images = ctx.gather_rows(torch.from_numpy(out.images), n_images)
    except BaseException:
        # This rank is failing with its own message; the launcher's SIGTERM must not replace it,
        # so the handler stays installed (and now ignores it) until the process has reported.
        ctx.failed = True
        with contextlib.suppress(Exception):  # the error being raised is the one to report
            ctx.close()
        raise
    signal.signal(signal.SIGTERM, previous)
    ctx.close(finished=True)
    if images is None:
        return None
    return CalibrationSet(np.ascontiguousarray(images.numpy()), source, out.settings,
                          {**out.stats, "setup_s": round(setup_s, 3)})
