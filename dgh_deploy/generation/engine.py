"""The optimisation loop shared by DGH and the BNS baseline.

With ``joint_stats`` every image gets exactly the gradient it would get with the whole set in
one batch, in one of two ways, both over chunks (the batch the device runs fastest):

- *retained*: when the whole set's activations fit in memory, every chunk runs forward with
  gradients, the loss takes the summed statistics, and one backward reaches every chunk;
- *two-pass*: otherwise each iteration first sums every chunk's BN-input statistics without
  gradients, then back-propagates each chunk through the loss of the *global* statistics (the
  other chunks' sums detached, this chunk's with gradients). Memory is then one chunk's, not
  the image count's, at the cost of a second forward.

In a torchrun job (``dist``, a :class:`~dgh_deploy.generation.collective.Collective`; the job
itself is :mod:`distributed`'s) this process holds one shard of the set, chunked the same way,
and the global sums are the all-reduce of every rank's own.

On one GPU either path's step is captured once as a CUDA graph and replayed (:mod:`cuda_graph`):
nothing in a step reads a value back to the host until its losses are done.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dgh_deploy.errors import DGHError, exc_reason
from dgh_deploy.generation import draws
from dgh_deploy.generation.activation_fusion import fuse_relus
from dgh_deploy.generation.augment import ImagePipeline
from dgh_deploy.generation.bn_kernels import FusedKernels
from dgh_deploy.generation.checkpoint import load_checkpoint, save_checkpoint, settings_hash
from dgh_deploy.generation.collective import Collective, shard_of
from dgh_deploy.generation.config import DGHConfig, scaled_extra_pixels
from dgh_deploy.generation.cuda_graph import GraphedStep
from dgh_deploy.generation.draws import Draws
from dgh_deploy.generation.input_prior import input_statistics
from dgh_deploy.generation.losses import BNAlignmentLoss, output_stretch_sum
from dgh_deploy.generation.memory import (
    budget_bytes,
    chunk_size,
    fits,
    keep_freed_memory,
    peak_memory_mb,
    retain_budget_bytes,
    saved_bytes_per_image,
)
from dgh_deploy.generation.precision import autocast
from dgh_deploy.generation.preflight import check_device, estimate_seconds, format_duration, probe_forward
from dgh_deploy.generation.scales import Stage, stages
from dgh_deploy.generation.schedule import PlateauSchedule
from dgh_deploy.generation.stats import BNInputRecorder, StatSums
from dgh_deploy.loaded_model import LoadedModel, require_batchnorm
from dgh_deploy.progress import progress_bar
from dgh_deploy.tasks import get_task

log = logging.getLogger("dgh_deploy")


@dataclass
class GeneratedImages:
    images: np.ndarray  # this process's images: the whole set, or in a torchrun job its shard
    settings: dict[str, Any]
    stats: dict[str, Any]


@dataclass
class _Run:
    """One run's changing state: what a checkpoint holds, and when this session's steps began."""

    images: torch.Tensor
    optimizer: torch.optim.Optimizer
    sched: PlateauSchedule
    checkpoint: Path | None
    key: str  # the settings hash a checkpoint must match
    start: int = 0  # the first iteration of this session (after a resume, the checkpoint's)
    curve: list[dict[str, float]] = field(default_factory=list)
    elapsed: float = 0.0  # seconds of earlier sessions (a resumed run's)
    t0: float = 0.0  # time.perf_counter() when this session's steps began
    rank_layouts: list[Any] = field(default_factory=list)  # (chunk, retained) per process, this stage
    updating: bool = False  # inside a step's update: the state is half-updated, not to be saved
    stage_s: list[float] = field(default_factory=list)  # seconds of steps per stage, all sessions


@dataclass(frozen=True)
class _StageSetup:
    """How one stage of a coarse-to-fine run runs: its image pipeline and its chunk layout."""

    stage: Stage
    pipeline: ImagePipeline
    chunk: int
    retain: bool


class Generator:
    """Optimises ``n_images`` images against one model's BN statistics (and output range).

    With ``dist`` (a torchrun job) this process optimises only its shard of the set, images
    ``offset .. offset + n_local - 1``; ``n`` stays the whole set's count.

    With a coarse-to-fine schedule (``DGHConfig.scales``, see :mod:`scales`) the images are
    held at each stage's size in turn, and upsampled at the start of the next stage.
    """

    def __init__(self, model: LoadedModel, n_images: int, iters: int, seed: int = 0, device: str = "cpu",
                 config: DGHConfig | None = None, source: str = "dgh", dtype: torch.dtype = torch.float32,
                 chunk: int | None = None, retain: bool | None = None, dist: Collective | None = None) -> None:
        if n_images < 1 or iters < 0:
            raise DGHError(f"cannot generate {n_images} images in {iters} iterations",
                           "pass --n-images >= 1 and --iters >= 0")
        require_batchnorm(model, "DGH" if source == "dgh" else f"--calib {source}")
        self.model, self.n, self.iters, self.seed, self.source = model, n_images, iters, seed, source
        self.device = check_device(device)
        self.config = _run_config(config or DGHConfig(), self.device, dtype, model.module)
        self.dist = dist
        self.offset, self.n_local = self._shard_bounds()
        self.dtype = dtype
        cfg = self.config
        self.task = get_task(model.task, model)
        self.channels_last = (cfg.channels_last and self.device.type in ("cpu", "cuda")
                              and dtype == torch.float32)  # faster convolutions (oneDNN, tensor cores)
        self.module = self._prepare_module()
        self.kernels = FusedKernels(cfg.compiled_kernels)
        self.recorder = BNInputRecorder(self.module, self.kernels)
        self.fused_relus = 0
        if self.kernels.compiled and self.device.type == "cpu":
            self.module, self.fused_relus = fuse_relus(self.module)
        self.layer_names = probe_forward(model, self.module, self.recorder, self.task, self.device, dtype)
        self.input_stats = input_statistics(model.preprocessing, cfg.input_prior)
        self.bn_loss = BNAlignmentLoss(self.recorder.reference(self.layer_names, self.device, self.input_stats),
                                       cfg.std_eps)
        if cfg.stage_lr not in ("restart", "carry"):
            raise DGHError(f"unknown stage_lr '{cfg.stage_lr}'", "use restart or carry")
        self.stages = stages(model.imgsz, iters, cfg.scales, int(model.extra.get("stride", 1)))
        self._setups = [self._stage_setup(stage, chunk, retain) for stage in self.stages]
        self._enter(0)
        self.settings = self._settings()

    # ---- set-up ------------------------------------------------------------------------------
    def _shard_bounds(self) -> tuple[int, int]:
        """This process's first image and image count: the whole set, or in a torchrun job its
        shard (refused when a shard would be empty, or for per-batch statistics)."""
        if self.dist is None:
            return 0, self.n
        if not self.config.joint_stats:
            raise DGHError("per-batch statistics (--calib bns) are not distributed",
                           "run it without torchrun")
        shard = self.dist.shard(self.n)
        if shard.size < 1:
            raise DGHError(f"{self.n} images cannot be shared among {self.dist.world_size} processes",
                           "pass --n-images at least the number of processes")
        return shard.start, shard.size

    def _prepare_module(self) -> torch.nn.Module:
        """A copy of the task's generation model on the device, frozen (the caller's model is
        left as it was), in ``channels_last`` memory format when that is chosen."""
        module = copy.deepcopy(self.task.prepare_for_generation(self.model)).eval().to(self.device, self.dtype)
        for p in module.parameters():
            p.requires_grad_(False)  # only the images are optimised: no weight gradients
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module

    def _stage_setup(self, stage: Stage, chunk: int | None, retain: bool | None) -> _StageSetup:
        """The image pipeline and chunk layout of ``stage`` (``chunk``, ``retain``: as given)."""
        cfg = self.config
        if stage.imgsz != self.model.imgsz:
            self._check_stage_size(stage.imgsz)
        pipeline = ImagePipeline(
            stage.imgsz, self._extra_pixels(stage.imgsz), self.model.preprocessing.pixel_range(),
            smoothing_size=cfg.smoothing_size, smoothing_sigma=cfg.smoothing_sigma, enabled=cfg.pipeline,
            clip=cfg.clip, channels_last=self.channels_last, device=self.device,
        )
        return _StageSetup(stage, pipeline, *self._layout(stage.imgsz, chunk, retain))

    def _extra_pixels(self, imgsz: tuple[int, int]) -> int:
        """The stored images' margin at ``imgsz``: the configured one in proportion to the input
        size (a coarse stage's crops move as far, relative to the image, as the full size's)."""
        extra = self.config.extra_pixels
        if extra is None:
            return scaled_extra_pixels(imgsz)
        return extra if imgsz == self.model.imgsz else round(extra * min(imgsz) / min(self.model.imgsz))

    def _check_stage_size(self, imgsz: tuple[int, int]) -> None:
        """A coarse stage's size must run the model and reach the same BN layers as the full size."""
        h, w = imgsz
        x = torch.zeros(1, 3, h, w, device=self.device, dtype=self.dtype)
        try:
            with torch.no_grad():
                self.recorder.start(x)
                self.module(x)
            seen = self.recorder.seen()
            self.recorder.take(seen)
        except Exception as exc:
            raise DGHError(f"model '{self.model.name}' does not take the coarse-to-fine stage size {h}x{w} "
                           f"({exc_reason(exc, 120)})", "generate at the full size only: --scales 1") from exc
        if seen != self.layer_names:
            raise DGHError(f"model '{self.model.name}' runs other BatchNorm layers at the stage size {h}x{w}",
                           "generate at the full size only: --scales 1")

    def _enter(self, index: int) -> None:
        """Make stage ``index`` the current one: its pipeline and chunk layout."""
        self.stage_index = index
        setup = self._setups[index]
        self.pipeline, self.chunk, self.retain = setup.pipeline, setup.chunk, setup.retain

    def _stage_at(self, iteration: int) -> int:
        return next(i for i, s in enumerate(self.stages) if iteration < s.stop or i == len(self.stages) - 1)

    def _layout(self, imgsz: tuple[int, int], chunk: int | None, retain: bool | None) -> tuple[int, bool]:
        """The chunk size and path (retained graphs or two passes) at ``imgsz``, as given or chosen
        from the memory one image's activations take and the device's budget (see :mod:`memory`)."""
        cfg = self.config
        per_image = None
        if cfg.joint_stats and (chunk is None or retain is None):
            probe = torch.zeros(2, 3, *imgsz, device=self.device, dtype=self.dtype)
            per_image = saved_bytes_per_image(self.module, probe, self._forward_loss_probe)
        if chunk is None:
            if per_image is not None:
                chunk = chunk_size(per_image, budget_bytes(self.device, cfg.memory_mb), self.n_local)
            else:
                chunk = min(cfg.batch_size, self.n)
        if retain is None:
            retain = per_image is not None and fits(per_image, retain_budget_bytes(self.device, cfg.memory_mb),
                                                    self.n_local)
        # One chunk is the retained path whatever the budget: its graph is all there is.
        return chunk, cfg.joint_stats and (retain or chunk >= self.n_local)

    # ---- settings --------------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        settings = {
            "source": self.source, "n_images": self.n, "iters": self.iters, "seed": self.seed,
            "imgsz": list(self.model.imgsz), "model": self.model.name, "fingerprint": self.model.fingerprint(),
            "extra_pixels_resolved": self._setups[-1].pipeline.extra[0],
            "patience_resolved": self._patience(), **self.config.hashed_settings(),
        }
        if len(self.stages) > 1:  # [h, w, first iteration, last + 1] per stage
            settings["stages"] = [[*s.imgsz, s.start, s.stop] for s in self.stages]
        return settings

    @property
    def is_lead(self) -> bool:
        """The process that logs, shows progress and writes files."""
        return self.dist is None or self.dist.is_lead

    def _patience(self) -> int:
        return self.config.patience if self.config.patience is not None else int(self.iters / 50)

    # ---- one forward ------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor) -> tuple[StatSums, torch.Tensor]:
        """Statistics sums and the output-stretch sum of one chunk of (augmented) inputs."""
        self.recorder.start(x)  # the input's statistics: float32, outside autocast
        with autocast(self.config.precision, self.device):
            out = self.module(x)
        sums = self.recorder.take(self.layer_names)
        stretch = output_stretch_sum(self.task.stretch_outputs(out)) if self.config.output_loss_multiplier else None
        return sums, stretch if stretch is not None else torch.zeros((), device=x.device)

    def _forward_loss_probe(self, x: torch.Tensor) -> None:
        sums, stretch = self._forward(x)
        (self.bn_loss(sums) + stretch).backward()

    def estimated_seconds(self) -> float:
        """What this run should take here, from a timed probe (shown before a long run starts)."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format

        def inputs_of(imgsz: tuple[int, int]) -> Callable[[int], torch.Tensor]:
            def make_input(k: int) -> torch.Tensor:
                x = torch.randn(k, 3, *imgsz, device=self.device, dtype=self.dtype)
                return x.contiguous(memory_format=fmt).requires_grad_(True)
            return make_input

        return sum(estimate_seconds(self._forward_loss_probe, inputs_of(s.stage.imgsz), self.n_local, s.stage.iters,
                                    s.chunk, None if s.retain else self._forward)
                   + s.stage.iters * self._update_seconds(s)
                   for s in self._setups if s.stage.iters)

    def _update_seconds(self, setup: _StageSetup) -> float:
        """One step's work on the stored images besides the model, at ``setup``'s stage: the image
        pipeline's views of every chunk and their backward (a second view of each on the two-pass
        path) and the optimiser's update of the whole set. At 640 an estimate without it came out
        0.67-0.82 of the time taken (bench/results/input_sizes_cpu.json); timed after a warm-up."""
        images = torch.randn(self.n_local, 3, *setup.pipeline.stored_hw, device=self.device, dtype=self.dtype)
        images.requires_grad_(True)
        flip, dy, dx = draws.augment_draws(self.seed, 0, np.arange(self.n_local), setup.pipeline.extra)
        optimizer, _ = self._optimizer(images)

        def step() -> None:
            for lo in range(0, self.n_local, setup.chunk):
                hi = min(lo + setup.chunk, self.n_local)
                if not setup.retain:
                    with torch.no_grad():
                        setup.pipeline.train_view(images[lo:hi], flip[lo:hi], dy[lo:hi], dx[lo:hi])
                view = setup.pipeline.train_view(images[lo:hi], flip[lo:hi], dy[lo:hi], dx[lo:hi])
                view.float().sum().mul(1e-6).backward()
            optimizer.step()

        step()  # warm-up: the first call of a shape is slow
        t0 = time.perf_counter()
        step()
        if images.is_cuda:
            torch.cuda.synchronize(images.device)
        return time.perf_counter() - t0

    def announce(self) -> float | None:
        """Log what is about to run and how long it should take (the lead process only); return
        that estimate in seconds (None where nothing was estimated)."""
        if self.iters < 1 or not self.is_lead:
            return None
        h, w = self.model.imgsz
        where = str(self.device) if self.dist is None else f"{self.dist.world_size} processes ({self.device.type})"
        estimate = self.estimated_seconds()
        log.info("generating %d %s images of %dx%d, %d iterations%s on %s (%s): about %s", self.n, self.source, h, w,
                 self.iters, self.describe_stages(), where, self.config.precision, format_duration(estimate))
        return estimate

    def describe_stages(self) -> str:
        """`` (coarse to fine: 140 at 160x160, 40 at 320x320, 20 at 640x640)``, or nothing for one stage."""
        if len(self.stages) < 2:
            return ""
        return " (coarse to fine: " + ", ".join(f"{s.iters} at {s.imgsz[0]}x{s.imgsz[1]}" for s in self.stages) + ")"

    def augment_draws(self, iteration: int) -> Draws:
        """This process's images' flips and crop offsets for one iteration (by global image index,
        so the same whatever the shard: the tests compare views across shards with it)."""
        index = np.arange(self.offset, self.offset + self.n_local)  # global: the same whatever the shard
        return draws.augment_draws(self.seed, iteration, index, self.pipeline.extra)

    def train_view(self, images: torch.Tensor, lo: int, hi: int, drawn: Draws) -> torch.Tensor:
        """What the model sees of ``images[lo:hi]`` in a step with ``drawn``: crop, flip, smoothing."""
        return self._view_of(images[lo:hi], lo, hi, drawn)

    def _view_of(self, part: torch.Tensor, lo: int, hi: int, drawn: Draws) -> torch.Tensor:
        """:meth:`train_view` of ``part``, which holds images ``lo:hi``."""
        flip, dy, dx = drawn
        return self.pipeline.train_view(part, flip[lo:hi], dy[lo:hi], dx[lo:hi])

    # ---- one iteration ---------------------------------------------------------------------
    def _global(self, sums: StatSums, stretch: torch.Tensor) -> tuple[StatSums, torch.Tensor]:
        """The whole set's statistics and output-stretch sum from this process's (detached) ones:
        one all-reduce of a single float64 vector per step in a torchrun job."""
        if self.dist is None:
            return sums, stretch.detach().double()
        flat = torch.cat([sums.flatten(), stretch.detach().to(torch.float64).reshape(1)])
        flat = self.dist.all_reduce_sum(flat)
        return sums.unflatten(flat[:-1]), flat[-1]

    def compute_grads(self, images: torch.Tensor, iteration: int) -> tuple[float, float]:
        """One eager step's gradient: accumulate into ``images.grad`` (this process's images: the
        whole set, or its shard) and return the (bn, output) loss values of ``iteration``.

        The run calls it each iteration unless the step is a replayed CUDA graph; the tests call
        it to compare the chunked, two-pass and distributed gradients with one batch's."""
        return _values(self._loss_terms(images, self.augment_draws(iteration)))

    def _loss_terms(self, images: torch.Tensor, drawn: Draws) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill ``images.grad``; return the (bn, output) losses as tensors: no host sync, so
        that on a GPU the whole step can be one CUDA graph (see :class:`GraphedStep`)."""
        n, mult = self.n, self.config.output_loss_multiplier
        bounds = [(i, min(i + self.chunk, self.n_local)) for i in range(0, self.n_local, self.chunk)]
        if not self.config.joint_stats:
            bn_total = out_total = torch.zeros((), dtype=torch.float64, device=images.device)
            for lo, hi in bounds:  # each batch matches the statistics on its own (BNS / ablation)
                sums, stretch = self._forward(self.train_view(images, lo, hi, drawn))
                bn = self.bn_loss(sums)
                (bn + mult * stretch / (hi - lo)).backward()
                bn_total = bn_total + bn.detach() * (hi - lo) / n
                out_total = out_total + stretch.detach().double() / n
            return bn_total, out_total
        if self.retain:
            # Every chunk's graph is kept: one forward with gradients and one backward. In a
            # torchrun job the graphs are kept through the all-reduce of the other shards' sums.
            # One split for the whole step: its backward is one concatenation of the chunks' gradients,
            # where a slice per chunk wrote each into a zero-filled copy of the whole set (YOLOv5n at
            # 320, 72 images: 8% of the step).
            parts = images.split([hi - lo for lo, hi in bounds])
            passes = [self._forward(self._view_of(part, lo, hi, drawn))
                      for part, (lo, hi) in zip(parts, bounds, strict=True)]
            sums, stretch = _total([p for p, _ in passes]), sum(s for _, s in passes)
            part = sums.detach()
            total, out_sum = self._global(part, stretch)
            bn = self.bn_loss((total - part) + sums)
            (bn + mult * stretch / n).backward()
            return bn.detach(), out_sum / n
        with torch.no_grad():
            passes = [self._forward(self.train_view(images, lo, hi, drawn)) for lo, hi in bounds]
        parts = [p for p, _ in passes]
        total, out_sum = self._global(_total(parts), sum(s for _, s in passes))
        for (lo, hi), part in zip(bounds, parts, strict=True):
            sums, stretch = self._forward(self.train_view(images, lo, hi, drawn))
            # Value of the global sums, gradient of this chunk's: the whole-set gradient, exactly.
            global_sums = (total - part) + sums
            (self.bn_loss(global_sums) + mult * stretch / n).backward()
        return self.bn_loss(total), out_sum / n

    def _graphable(self) -> bool:
        """One process on a GPU: the step's work is fixed, so it can be one CUDA graph."""
        return self.config.cuda_graphs and self.device.type == "cuda" and self.dist is None

    def _graphed_step(self, images: torch.Tensor, iteration: int) -> GraphedStep | None:
        try:
            return GraphedStep(self._loss_terms, images, self.augment_draws(iteration))
        except RuntimeError as e:  # an op that cannot be captured: the eager step is the same math
            log.warning("CUDA graph capture failed, running the steps eagerly: %s", str(e).splitlines()[0])
            torch.cuda.synchronize(self.device)
            images.grad = None
            return None

    # ---- the run -----------------------------------------------------------------------------
    def initial_images(self) -> torch.Tensor:
        index = np.arange(self.offset, self.offset + self.n_local)
        noise = draws.gaussian_images(self.seed, index, (3, *self.pipeline.stored_hw))
        mean, std = (torch.as_tensor(v, dtype=noise.dtype).view(1, 3, 1, 1) for v in self.input_stats)
        return noise * std + mean

    def _load(self, checkpoint: Path, key: str) -> dict[str, Any] | None:
        if self.dist is None:
            return load_checkpoint(checkpoint, key, self.device)
        # Rank 0 reads the whole-set checkpoint; each rank gets its rows of it.
        return self.dist.scatter_state(lambda: load_checkpoint(checkpoint, key, torch.device("cpu")), self.n)

    def _saved_layout(self, state: dict[str, Any]) -> tuple[int, bool] | None:
        """The chunk and path this process used before the interruption, when the process layout
        is the same (same chunks, same floating-point sums: the resumed run is bit-identical)."""
        world = self.dist.world_size if self.dist is not None else 1
        if int(state.get("world_size", 1)) != world:
            return None
        rank = self.dist.rank if self.dist is not None else 0
        if "rank_layouts" in state:
            chunk, retain = state["rank_layouts"][rank]
            return int(chunk), bool(retain)
        chunk = int(state.get("rank_chunks", [state["chunk"]])[rank])  # older checkpoints
        return chunk, chunk >= self.n_local

    def run(self, checkpoint: Path | None = None, resume: bool = False, progress: bool = True) -> GeneratedImages:
        """Optimise the images and return them with the run's settings and statistics.

        ``checkpoint``: saved every ``checkpoint_every`` iterations and at the end, and on Ctrl-C
        (one process); ``resume``: continue from it when it was written for these settings."""
        run = self._start(checkpoint, resume)
        bar = _progress_bar(self.iters, run.start, progress and self.is_lead, self.source)
        run.t0 = time.perf_counter()
        heap = _HeapPolicy()
        try:
            graphed = self._iterate(run, bar, heap)
        finally:
            heap.keep(False)
            if bar is not None:
                bar.close()
        self._advance(run, len(self.stages) - 1)  # a run of no iterations ends at the full size too
        self._save(run, self.iters)
        elapsed = run.elapsed + time.perf_counter() - run.t0
        final = self.finalize(run.images)
        return self._result(run, final, elapsed, graphed)

    def _optimizer(self, images: torch.Tensor,
                   lr: float | None = None) -> tuple[torch.optim.Optimizer, PlateauSchedule]:
        """The configured optimiser of the images (at ``lr``; None: the configured start) and its
        learning-rate schedule."""
        cfg = self.config
        opt_cls = {"radam": torch.optim.RAdam, "adam": torch.optim.Adam}.get(cfg.optimizer)
        if opt_cls is None:
            raise DGHError(f"unknown optimizer '{cfg.optimizer}'", "use radam or adam")
        optimizer = opt_cls([images], lr=cfg.lr if lr is None else lr)
        sched = PlateauSchedule(optimizer, cfg.lr_factor, self._patience(), cfg.min_lr,
                                reset=cfg.scheduler == "plateau_reset")
        return optimizer, sched

    def _start(self, checkpoint: Path | None, resume: bool) -> _Run:
        """Fresh images and optimiser, or an interrupted run's state (``resume`` and a checkpoint
        for these settings) at its stage; then every process's chunk layout, which the
        checkpoints record."""
        key = settings_hash(self.settings)
        state = self._load(checkpoint, key) if (checkpoint is not None and resume) else None
        self._enter(int(state.get("stage", 0)) if state is not None else 0)
        images = self.initial_images().to(self.device, self.dtype).requires_grad_(True)
        optimizer, sched = self._optimizer(images)
        run = _Run(images, optimizer, sched, checkpoint, key, stage_s=[0.0] * len(self.stages))
        if state is not None:
            self._restore(run, state)
        self._gather_layouts(run)
        return run

    def _gather_layouts(self, run: _Run) -> None:
        layout = (self.chunk, self.retain)
        run.rank_layouts = self.dist.all_gather_object(layout) if self.dist is not None else [layout]

    def _advance(self, run: _Run, index: int) -> None:
        """Move the run to stage ``index`` (nothing if it is there): the images upsampled to the
        stage's stored size, and a fresh optimiser at the configured learning rate or the one
        reached (``stage_lr``). The moments are not carried over: a pixel's gradient shrinks with
        the pixel count, so moments from a coarser stage would misjudge the step (DeepInversion
        restarts its optimiser too)."""
        if index == self.stage_index:
            return
        lr = run.sched.lr if self.config.stage_lr == "carry" else self.config.lr
        self._enter(index)
        with torch.no_grad():
            images = F.interpolate(run.images.detach(), size=self.pipeline.stored_hw, mode="bilinear",
                                   align_corners=False, antialias=False)
        run.images = images.contiguous().requires_grad_(True)
        run.optimizer, run.sched = self._optimizer(run.images, lr)
        self._gather_layouts(run)

    def _restore(self, run: _Run, state: dict[str, Any]) -> None:
        """Continue where ``state`` (a loaded checkpoint) stopped: images, optimiser and schedule,
        the loss curve and time so far, and the chunk layout when the processes are the same."""
        with torch.no_grad():
            run.images.copy_(state["images"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.sched.load_state_dict(state["scheduler"])
        run.start, run.curve, run.elapsed = int(state["iteration"]), list(state["curve"]), float(state["elapsed_s"])
        run.stage_s = [float(s) for s in state.get("stage_s", run.stage_s)]
        self.chunk, self.retain = self._saved_layout(state) or (self.chunk, self.retain)
        if self.is_lead:
            log.info("resuming generation from %s at iteration %d/%d", run.checkpoint, run.start, self.iters)

    def _iterate(self, run: _Run, bar: Any, heap: _HeapPolicy) -> bool:
        """Iterations ``run.start .. iters - 1``, each at its stage, with a checkpoint every
        ``checkpoint_every``. Ctrl-C saves the state before the interrupted step (unless it came
        mid-update), so that resume redoes that step and ends with the uninterrupted images.
        Returns whether the steps ran as a captured CUDA graph."""
        cfg = self.config
        it = run.start
        graphed: GraphedStep | None = None
        try:
            for it in range(run.start, self.iters):
                stage = self._stage_at(it)
                if stage != self.stage_index or it == run.start:
                    self._advance(run, stage)
                    graphed = self._graphed_step(run.images, it) if self._graphable() else None
                    heap.keep(self.device.type == "cpu" and self.retain)
                self._step(run, it, graphed, bar)
                if cfg.checkpoint_every and (it + 1) % cfg.checkpoint_every == 0 and it + 1 < self.iters:
                    self._save(run, it + 1)
        except KeyboardInterrupt:
            # In a torchrun job the ranks are interrupted at different points, so a gathering
            # save could not pair up: the last periodic checkpoint is what resume continues from.
            if run.checkpoint is not None and not run.updating and self.dist is None:
                self._save(run, it)  # iteration ``it`` had not been applied: resume redoes it
                log.warning("generation interrupted; progress saved to %s (resume to continue)", run.checkpoint)
            raise
        return graphed is not None

    def _step(self, run: _Run, it: int, graphed: GraphedStep | None, bar: Any) -> None:
        """Iteration ``it``: the gradient (eager, or the captured graph replayed), the optimiser
        and schedule update, the loss curve and the progress bar."""
        t0 = time.perf_counter()
        if graphed is None:
            run.images.grad = None
            bn, out = self.compute_grads(run.images, it)
        else:  # replays the captured step; it overwrites images.grad in place
            bn, out = _values(graphed(self.augment_draws(it)))
        total = bn + self.config.output_loss_multiplier * out
        if not math.isfinite(total):  # stepping on would write NaN images: stop, and say where
            raise DGHError(
                f"generation diverged at iteration {it + 1}: the loss is {total} (BN {bn}, output {out})",
                "check the model's weights and BN statistics for extreme values, or lower DGHConfig.lr",
            )
        run.updating = True  # from here to the end of the step the state is half-updated
        run.optimizer.step()
        run.sched.step(total)
        run.curve.append({"total": _round(total), "bn": _round(bn), "output": _round(out)})
        run.stage_s[self.stage_index] += time.perf_counter() - t0
        run.updating = False
        if bar is not None:
            bar.set_postfix(bn=f"{bn:.4f}", out=f"{out:.2f}", lr=f"{run.sched.lr:.3g}", refresh=False)
            bar.update(1)

    def _save(self, run: _Run, iteration: int) -> None:
        """Checkpoint the state after ``iteration`` steps (nothing without a checkpoint path). In a
        torchrun job every rank calls it: the whole set is gathered to rank 0, alone in writing,
        so the checkpoint resumes with any process count."""
        if run.checkpoint is None:
            return
        state: dict[str, Any] | None = {
            "settings_hash": run.key, "iteration": iteration, "images": run.images.detach(),
            "optimizer": run.optimizer.state_dict(), "scheduler": run.sched.state_dict(), "curve": run.curve,
            "elapsed_s": run.elapsed + time.perf_counter() - run.t0,
            "rank_layouts": [list(x) for x in run.rank_layouts],  # (chunk, retained) per process
            "stage": self.stage_index,  # the images' size: a coarse-to-fine run's stage
            "stage_s": list(run.stage_s),
        }
        if self.dist is not None:
            state = self.dist.gather_state({**state, "world_size": self.dist.world_size},
                                           self.n, (3, *self.pipeline.stored_hw))
        if state is not None:
            save_checkpoint(run.checkpoint, state)

    def _result(self, run: _Run, final: np.ndarray, elapsed: float, graphed: bool) -> GeneratedImages:
        """This process's images with the run's settings and statistics; in a torchrun job the
        statistics are the whole job's (every rank takes part in the gathers)."""
        peak = peak_memory_mb(self.device)
        stats = {
            "time_s": round(elapsed, 3),
            "final_losses": dict(run.curve[-1]) if run.curve else {},
            "loss_curve": run.curve,  # one {"total", "bn", "output"} per iteration
            "image_iters_per_s": round(self.n * (self.iters - run.start) / max(time.perf_counter() - run.t0, 1e-9), 2),
            "chunk": self.chunk,
            "chunks": -(-self.n // self.chunk),
            "retained_graphs": self.retain,  # one forward per step (True) or two (see the module doc)
            "cuda_graph": graphed,
            "bn_kernels": "compiled" if self.kernels.ran_compiled else "eager",
            "fused_relus": self.fused_relus,  # ReLUs folded into their BN layer's kernels
            "peak_memory_mb": round(peak, 1),
            "stage_s": [round(s, 2) for s in run.stage_s],  # steps' seconds per stage (coarse to fine)
            "device": str(self.device),
        }
        settings = {**self.settings, "device": str(self.device), "chunk": self.chunk}
        if self.dist is not None:
            world = self.dist.world_size
            sizes = [shard_of(self.n, r, world).size for r in range(world)]
            stats["chunks"] = sum(-(-size // c) for size, (c, _) in zip(sizes, run.rank_layouts, strict=True))
            stats["peak_memory_mb"] = round(max(self.dist.all_gather_object(peak)), 1)  # per process
            stats["processes"] = settings["processes"] = world
        return GeneratedImages(final, settings, stats)

    @torch.no_grad()
    def finalize(self, images: torch.Tensor) -> np.ndarray:
        out = [self.pipeline.final_view(images[i : i + self.chunk].detach()).float().cpu()
               for i in range(0, self.n_local, self.chunk)]
        return torch.cat(out).contiguous().numpy()

    def close(self) -> None:
        self.recorder.remove()


class _HeapPolicy:
    """On CPU freed tensors stay in the heap while a stage retains its graphs (see
    keep_freed_memory), but not on the two-pass path, taken because memory is short: there the
    kept heap fragmented, and 4096 demo images peaked at 1.84 to 2.15 GB of RSS from run to run
    (1.52 to 1.78 GB without it). Set per stage: a coarse-to-fine run's stages may differ."""

    def __init__(self) -> None:
        self._kept: contextlib.ExitStack | None = None

    def keep(self, on: bool) -> None:
        if on == (self._kept is not None):
            return
        if self._kept is not None:
            self._kept.close()
            self._kept = None
        else:
            self._kept = contextlib.ExitStack()
            self._kept.enter_context(keep_freed_memory())


def _run_config(config: DGHConfig, device: torch.device, dtype: torch.dtype, module: torch.nn.Module) -> DGHConfig:
    """``config`` as it runs: precision resolved (fp32 or bf16). Autocast lowers float32 only, so
    a model kept in another dtype (the tests' float64) runs in that dtype and records fp32."""
    if dtype != torch.float32:
        config = replace(config, precision="fp32")
    return config.resolved(str(device), module)


def _total(parts: list[StatSums]) -> StatSums:
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def _values(terms: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
    bn, out = torch.stack([t.double() for t in terms]).tolist()  # one host sync per step
    return bn, out


def _round(v: float) -> float:
    return float(f"{v:.6g}")


def _progress_bar(total: int, initial: int, enabled: bool, label: str) -> Any:
    return progress_bar(total, f"generating ({label})", enabled, initial)
