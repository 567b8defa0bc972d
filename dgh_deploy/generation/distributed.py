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
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.errors import DGHError, exc_reason
from dgh_deploy.generation.config import DGHConfig
from dgh_deploy.generation.preflight import check_device
from dgh_deploy.loading import LoadedModel

log = logging.getLogger("dgh_deploy")

TIMEOUT_ENV = "DGH_DIST_TIMEOUT_S"
RESUME_HINT = "rerun the same torchrun command with --resume to continue from the last checkpoint"


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


@dataclass(frozen=True)
class Shard:
    """The global image indices ``start .. stop-1`` that one rank optimises."""

    rank: int
    world_size: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def shard_of(n_images: int, rank: int, world_size: int) -> Shard:
    """Contiguous blocks whose sizes differ by at most one, in rank order."""
    return Shard(rank, world_size, n_images * rank // world_size, n_images * (rank + 1) // world_size)


@dataclass(frozen=True)
class _Rows:
    """Stands for a per-image tensor while a checkpoint's small parts are broadcast."""

    dtype: torch.dtype


def _map_rows(obj: Any, is_rows: Callable[[torch.Tensor], bool], fn: Callable[[Any], Any]) -> Any:
    """``obj`` with every per-image tensor (or :class:`_Rows`) replaced by ``fn(it)``, in a
    traversal order that is the same on every rank (the collectives inside ``fn`` pair up)."""
    if isinstance(obj, dict):
        return {k: _map_rows(v, is_rows, fn) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_map_rows(v, is_rows, fn) for v in obj)
    if isinstance(obj, _Rows) or (isinstance(obj, torch.Tensor) and is_rows(obj)):
        return fn(obj)
    return obj


class Collective:
    """This process's place in a torch.distributed job, and the few collectives generation uses."""

    def __init__(self, rank: int, world_size: int, device: torch.device, side_group: Any = None) -> None:
        self.rank, self.world_size, self.device = rank, world_size, device
        self._cpu_group = side_group  # None: the default (gloo) group handles CPU tensors too
        self.failed = False  # a collective failed: this rank is already on its way out

    @property
    def is_lead(self) -> bool:
        return self.rank == 0

    def shard(self, n_images: int) -> Shard:
        return shard_of(n_images, self.rank, self.world_size)

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except RuntimeError as exc:  # DistBackendError, gloo's IoException, timeouts
            self.failed = True
            raise DGHError(
                f"generation rank {self.rank} of {self.world_size} lost the other processes during {what} "
                f"(a rank died, was killed or stopped answering: {_reason(exc)})", RESUME_HINT,
            ) from exc

    def on_stop_signal(self, signum: int, _frame: Any) -> None:
        """torchrun stops the surviving ranks with SIGTERM when one fails: say so in one line
        instead of dying silently (unless this rank has already reported the failure)."""
        if self.failed:
            return
        self.failed = True
        raise DGHError(f"generation rank {self.rank} of {self.world_size} was stopped by the launcher "
                       f"({signal.Signals(signum).name}: another rank failed or the job was cancelled)", RESUME_HINT)

    # ---- every step ---------------------------------------------------------------------------
    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        with self._guard("the statistics all-reduce"):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    # ---- now and then -------------------------------------------------------------------------
    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        with self._guard("a gather of run settings"):
            dist.all_gather_object(out, obj, group=self._cpu_group)
        return out

    def gather_rows(self, local: torch.Tensor, n_images: int) -> torch.Tensor | None:
        """The whole set's rows on rank 0 (in global index order), None on the other ranks."""
        largest = -(-n_images // self.world_size)
        padded = torch.zeros((largest, *local.shape[1:]), dtype=local.dtype)
        padded[: len(local)] = local.detach().cpu()
        bufs = [torch.empty_like(padded) for _ in range(self.world_size)] if self.is_lead else None
        with self._guard("a gather to rank 0"):
            dist.gather(padded, bufs, dst=0, group=self._cpu_group)
        if bufs is None:
            return None
        return torch.cat([buf[: shard_of(n_images, r, self.world_size).size] for r, buf in enumerate(bufs)])

    def scatter_rows(self, full: torch.Tensor | None, n_images: int, row_shape: tuple[int, ...],
                     dtype: torch.dtype) -> torch.Tensor:
        """This rank's rows of ``full`` (given on rank 0 only)."""
        largest = -(-n_images // self.world_size)
        parts = None
        if full is not None:
            parts = []
            for r in range(self.world_size):
                s = shard_of(n_images, r, self.world_size)
                part = torch.zeros((largest, *row_shape), dtype=dtype)
                part[: s.size] = full[s.start : s.stop]
                parts.append(part)
        out = torch.empty((largest, *row_shape), dtype=dtype)
        with self._guard("a scatter from rank 0"):
            dist.scatter(out, parts, src=0, group=self._cpu_group)
        return out[: self.shard(n_images).size]

    def gather_state(self, state: dict[str, Any], n_images: int, row_shape: tuple[int, ...]) -> dict[str, Any] | None:
        """A checkpoint of the whole set on rank 0: this rank's ``state`` with every per-image
        tensor (images, optimizer moments) gathered; None on the other ranks."""
        local = (self.shard(n_images).size, *row_shape)
        out = _map_rows(state, lambda t: tuple(t.shape) == local, lambda t: self.gather_rows(t, n_images))
        return out if self.is_lead else None

    def scatter_state(self, load: Callable[[], dict[str, Any] | None], n_images: int,
                      row_shape: tuple[int, ...]) -> dict[str, Any] | None:
        """Rank 0 runs ``load`` (a whole-set checkpoint, or None); every rank gets the small
        parts and its own rows of the per-image tensors. Only rank 0 reads the file, so the
        other ranks need not share its filesystem."""
        full_shape = (n_images, *row_shape)
        state, failure = None, None
        if self.is_lead:
            try:
                state = load()
            except DGHError as err:
                failure = (err.problem, err.fix)
        is_rows = lambda t: tuple(t.shape) == full_shape  # noqa: E731
        skeleton = _map_rows(state, is_rows, lambda t: _Rows(t.dtype)) if state is not None else None
        box = [(skeleton, failure)]
        with self._guard("the checkpoint broadcast"):
            dist.broadcast_object_list(box, src=0, group=self._cpu_group)
        skeleton, failure = box[0]
        if failure is not None:
            raise DGHError(*failure)
        if skeleton is None:
            return None
        full_rows = iter([]) if state is None else iter(_collect_rows(state, is_rows))
        return _map_rows(skeleton, is_rows, lambda marker: self.scatter_rows(
            next(full_rows) if self.is_lead else None, n_images, row_shape, marker.dtype))

    def close(self, finished: bool = False) -> None:
        """Leave the job. ``finished``: every rank got here without error, so wait for the others
        first: a rank that tore its connections down while a peer was still finishing its last
        collective could abort in gloo's teardown (seen now and then in this project's torchrun test)."""
        if not dist.is_initialized():
            return
        if finished:
            # The images are already gathered: a peer lost at this point costs nothing, so it is
            # no error (the barrier only orders the teardown).
            with contextlib.suppress(RuntimeError):
                dist.barrier(group=self._cpu_group)
        dist.destroy_process_group()


def _reason(exc: BaseException) -> str:
    """The gist of a backend error: gloo's first line without its source location, one sentence."""
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", exc_reason(exc, 10_000))
    return text.split(". ")[0][:160].rstrip(".")


def _collect_rows(state: Any, is_rows: Callable[[torch.Tensor], bool]) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    _map_rows(state, is_rows, lambda t: found.append(t))
    return found


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
        raise DGHError(f"rank {rank} of {world} could not join the torchrun job ({backend}: {_reason(exc)})",
                       "check MASTER_ADDR/MASTER_PORT (or --rdzv-endpoint) and that every node can reach it") from exc
    return Collective(rank, world, dev, side)


def generate(model: LoadedModel, source: str, n_images: int, iters: int, seed: int = 0, device: str = "cpu",
             resume: bool = False, checkpoint: Path | None = None, config: DGHConfig | None = None,
             progress: bool = True) -> CalibrationSet | None:
    """:func:`make_calibration_set` for a torchrun job: the whole set on rank 0, None elsewhere."""
    from dgh_deploy.generation.engine import Generator

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
