"""Distributed generation under torchrun (gloo on CPU): the same images as one process, a killed
rank fails the job in one line, and --resume completes it with the uninterrupted result."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_generation_models import as_loaded, tiny_bn_net

from dgh_deploy.calibration import CalibrationSet
from dgh_deploy.cli import main
from dgh_deploy.errors import DGHError
from dgh_deploy.generation import DGHConfig, collective, distributed
from dgh_deploy.generation.collective import shard_of
from dgh_deploy.generation.distributed import DistConfig
from dgh_deploy.generation.engine import Generator

REPO = Path(__file__).resolve().parents[1]
GENERATE = ["generate", "--model", "demo", "--n-images", "16", "-q"]
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "dgh_deploy.cli", *args]


def _env() -> dict[str, str]:
    # PYTHONFAULTHANDLER: a rank that dies of a native abort prints where, in the failure message.
    return {**{k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}, "PYTHONFAULTHANDLER": "1"}


def _ranks_stderr(err: str) -> str:
    """What the ranks printed, without the launcher's own traceback (which names no cause)."""
    run_py = err.find("torch/distributed/run.py")
    launcher = err.rfind("Traceback (most recent call last):", 0, run_py) if run_py >= 0 else -1
    return (err[:launcher] if launcher >= 0 else err)[-4000:]


def _one_process(args: list[str]) -> None:
    """The same command without torchrun, in a fresh process on one thread like each rank (two
    threads gain nothing here and stall badly when other jobs share the two cores). Not in this
    process: the compiled BN kernels are generated for the thread count they were first compiled
    at, and earlier tests here compiled them for two, whose sums add in another order."""
    env = {**_env(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dgh_deploy.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _assert_same_run(got: CalibrationSet, want: CalibrationSet) -> None:
    np.testing.assert_allclose(got.images, want.images, rtol=1e-4, atol=1e-6)
    assert len(got.stats["loss_curve"]) == len(want.stats["loss_curve"])
    for a, b in zip(got.stats["loss_curve"], want.stats["loss_curve"], strict=True):
        for key in ("total", "bn", "output"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (key, a, b)


# ---- without processes ----------------------------------------------------------------------------
def test_shards_are_contiguous_and_even() -> None:
    for n in (2, 3, 16, 17, 257):
        for world in (1, 2, 3):
            if n < world:
                continue
            shards = [shard_of(n, r, world) for r in range(world)]
            assert shards[0].start == 0 and shards[-1].stop == n
            assert all(a.stop == b.start for a, b in itertools.pairwise(shards))
            assert max(s.size for s in shards) - min(s.size for s in shards) <= 1


class _ThreadRanks:
    """torch.distributed's all-reduce for ranks that are threads of this process."""

    def __init__(self, world: int) -> None:
        self.world = world
        self.slots: list[torch.Tensor | None] = [None] * world
        self.barrier = threading.Barrier(world, timeout=60)

    def rank(self, r: int) -> Any:
        ranks = self

        class Rank:
            rank, world_size, is_lead = r, ranks.world, r == 0

            def shard(self, n: int) -> collective.Shard:
                return shard_of(n, r, ranks.world)

            def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
                ranks.slots[r] = t.clone()
                ranks.barrier.wait()
                total = sum(ranks.slots[1:], ranks.slots[0])
                ranks.barrier.wait()
                return total

        return Rank()


@pytest.mark.parametrize(("chunk", "retain"), [(3, False), (3, True), (8, False)])
def test_each_shard_gets_the_whole_set_gradient(chunk: int, retain: bool) -> None:
    """Two ranks (threads), one chunk or several per shard: each image's gradient and the loss
    are those of the whole set in one process."""
    model = as_loaded(tiny_bn_net().double())
    cfg = DGHConfig(output_loss_multiplier=1e-2)
    whole = Generator(model, 16, 5, seed=3, config=cfg, dtype=torch.float64, chunk=16)
    x = whole.initial_images().double().requires_grad_(True)
    want = whole.compute_grads(x, iteration=2)

    ranks = _ThreadRanks(2)
    gens = [Generator(model, 16, 5, seed=3, config=cfg, dtype=torch.float64, chunk=chunk, retain=retain,
                      dist=ranks.rank(r)) for r in range(2)]
    results: list[Any] = [None, None]

    def work(r: int) -> None:
        xr = gens[r].initial_images().double().requires_grad_(True)
        try:
            results[r] = (xr, gens[r].compute_grads(xr, iteration=2))
        except BaseException as exc:  # surfaced below, not lost in the thread
            results[r] = exc

    threads = [threading.Thread(target=work, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r, res in enumerate(results):
        assert not isinstance(res, BaseException), res
        xr, (bn, out) = res
        lo, hi = shard_of(16, r, 2).start, shard_of(16, r, 2).stop
        assert torch.equal(xr.detach(), x.detach()[lo:hi])  # initial noise by global index
        assert bn == pytest.approx(want[0], rel=1e-12) and out == pytest.approx(want[1], rel=1e-12)
        assert torch.allclose(xr.grad, x.grad[lo:hi], rtol=1e-9, atol=1e-12 * x.grad.abs().max().item())


def test_refusals_before_joining_a_job(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    model = as_loaded(tiny_bn_net())
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(DGHError, match="cannot be shared among 4 processes"):
        distributed.generate(model, "dgh", 2, 1)
    with pytest.raises(DGHError, match="DGH generation only"):
        distributed.generate(model, "bns", 8, 1)
    assert main(["--target", "sim", "--out", "unused", "-q"]) == 2  # the whole job is not distributed
    assert "torchrun runs 'dgh-deploy generate' only" in capsys.readouterr().err
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "soon")
    with pytest.raises(DGHError, match="not a positive number of seconds"):
        DistConfig.from_env()


# ---- torchrun, 2 processes -----------------------------------------------------------------------
def test_two_processes_give_the_one_process_images(tmp_path: Path) -> None:
    two, one = tmp_path / "two" / "calib.npz", tmp_path / "one.npz"
    proc = subprocess.run(_torchrun([*GENERATE, "--iters", "20", "--out", str(two)]), cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, _ranks_stderr(proc.stderr)
    assert proc.stdout.count("wrote ") == 1  # rank 0 reports; the other rank writes and prints nothing
    assert sorted(p.name for p in two.parent.iterdir()) == ["calib.npz"]  # no checkpoint, no leftovers
    _one_process([*GENERATE, "--iters", "20", "--out", str(one)])

    got, want = CalibrationSet.load(two), CalibrationSet.load(one)
    assert got.images.shape == (16, 3, 32, 32)
    _assert_same_run(got, want)
    assert got.settings["processes"] == 2 and got.stats["chunks"] == 2


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of torchrun's worker for ``rank``, read from its environment in /proc."""
    for task in Path(f"/proc/{launcher}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                env = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return int(child)
    return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the rank's pid in /proc")
def test_killed_rank_fails_the_job_and_resume_completes_it(tmp_path: Path) -> None:
    out = tmp_path / "calib.npz"
    ckpt = Path(f"{out}.ckpt")
    args = [*GENERATE, "--iters", "120", "--out", str(out)]  # checkpoints every 50 iterations
    proc = subprocess.Popen(_torchrun(args), cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ckpt.exists(), "no checkpoint appeared"
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    ours = [ln for ln in err.splitlines() if ln.startswith("dgh-deploy: error:")]
    assert ours, _ranks_stderr(err)
    assert all("rank 0 of 2" in ln and "--resume" in ln for ln in ours), ours
    assert not out.exists()
    assert torch.load(ckpt, weights_only=True)["iteration"] in (50, 100)

    proc = subprocess.run(_torchrun([*args, "--resume"]), cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, _ranks_stderr(proc.stderr)
    assert out.exists() and not ckpt.exists()

    uninterrupted = tmp_path / "one.npz"
    _one_process([*GENERATE, "--iters", "120", "--out", str(uninterrupted)])
    _assert_same_run(CalibrationSet.load(out), CalibrationSet.load(uninterrupted))
