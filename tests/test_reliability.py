"""Concurrency and interrupts, with real processes: one cache entry per key, nothing half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.reliability import cache_problems, result_problems
from dgh_deploy.reporting.report import Report

JOB = ["--target", "sim", "--n-images", "16", "--quiet", "--no-human-report"]


def start(args: list[str], cache: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "DGH_DEPLOY_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "dgh_deploy", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_two_jobs_on_one_cache_key_generate_once(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    jobs = [start([*JOB, "--iters", "60", "--out", str(tmp_path / f"out{i}")], cache) for i in (0, 1)]
    outputs = [job.communicate(timeout=600) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs
    cached = [json.loads((tmp_path / f"out{i}" / "report.json").read_text())["calibration"]["cached"] for i in (0, 1)]
    assert sorted(cached) == [False, True]  # one generated, the other waited and reused it
    assert len(list(cache.glob("*.npz"))) == 1 and cache_problems(cache) == []
    assert all(result_problems(tmp_path / f"out{i}") == [] for i in (0, 1))


def test_sigterm_in_generation_keeps_out_and_resume_finishes(tmp_path: Path) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    first = start([*JOB, "--iters", "20", "--out", str(out)], cache)
    first.communicate(timeout=600)
    before = (out / "report.json").read_text()
    checkpoint = out.with_name("out.generation.ckpt")
    job = start([*JOB, "--iters", "400", "--no-cache", "--out", str(out)], cache)
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and time.monotonic() < deadline:  # the first periodic save: mid-generation
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=300)
    assert job.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("dgh-deploy: terminated (SIGTERM); the output folder is unchanged")
    assert (out / "report.json").read_text() == before and result_problems(out) == []
    assert checkpoint.is_file()

    resumed = start([*JOB, "--iters", "400", "--no-cache", "--resume", "--out", str(out)], cache)
    _, err = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, err
    assert "resuming generation" in err and not checkpoint.exists()
    report = Report.read(out / "report.json")
    assert report.calibration.settings["iters"] == 400 and result_problems(out) == []
