"""The collectives a generation process uses, and how the image set is split among processes.

This module sits below the engine (:mod:`engine` optimises a shard through a :class:`Collective`)
and below the torchrun driver (:mod:`distributed` joins the job and builds the
:class:`Collective`); it imports neither.

Each rank optimises a contiguous block of the image set (:func:`shard_of`). Every step the ranks
all-reduce one float64 vector (:meth:`Collective.all_reduce_sum`); now and then the per-image
tensors of a checkpoint are gathered to rank 0 or scattered from it. A failed collective (a rank
died, was killed or hangs) becomes a one-line :class:`DGHError` naming ``--resume``.
"""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from dgh_deploy.errors import DGHError, exc_reason

RESUME_HINT = "rerun the same torchrun command with --resume to continue from the last checkpoint"


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


def backend_reason(exc: BaseException) -> str:
    """The gist of a backend error: gloo's first line without its source location, one sentence."""
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", exc_reason(exc, 10_000))
    return text.split(". ")[0][:160].rstrip(".")


@dataclass(frozen=True)
class _Rows:
    """Stands for a per-image tensor while a checkpoint's small parts are broadcast."""

    dtype: torch.dtype
    row_shape: tuple[int, ...]  # one image's: a coarse-to-fine run's images change size by stage


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


def _collect_rows(state: Any, is_rows: Callable[[torch.Tensor], bool]) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    _map_rows(state, is_rows, lambda t: found.append(t))
    return found


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
                f"(a rank died, was killed or stopped answering: {backend_reason(exc)})", RESUME_HINT,
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

    def scatter_state(self, load: Callable[[], dict[str, Any] | None], n_images: int) -> dict[str, Any] | None:
        """Rank 0 runs ``load`` (a whole-set checkpoint, or None); every rank gets the small
        parts and its own rows of the per-image tensors (the image-shaped tensors of all
        ``n_images``: the images and the optimiser's moments). Only rank 0 reads the file, so the
        other ranks need not share its filesystem."""
        state, failure = None, None
        if self.is_lead:
            try:
                state = load()
            except DGHError as err:
                failure = (err.problem, err.fix)
        is_rows = lambda t: t.ndim == 4 and t.shape[0] == n_images  # noqa: E731
        skeleton = (_map_rows(state, is_rows, lambda t: _Rows(t.dtype, tuple(t.shape[1:])))
                    if state is not None else None)
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
            next(full_rows) if self.is_lead else None, n_images, marker.row_shape, marker.dtype))

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
