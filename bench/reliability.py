"""Reliability under interrupts and concurrency: nothing corrupt, whatever the moment of the kill.

Two measurements on the bundled demo model, each job a real ``dgh-deploy`` process:

* **concurrent jobs**: two jobs started together on one cache key (same model, source, budget,
  seed); the second must wait for the first's lock and reuse its entry, so exactly one generates,
  both succeed, and the cache holds one valid entry;
* **kills at random moments**: a complete result is made in ``--out``; then each round starts the
  same job (alternately from the cache and generating) and sends SIGINT or SIGTERM at a uniformly
  random moment of its run. After every kill ``--out`` must hold a complete result (the previous
  one, or the new one if the job had finished), no staging folder or partial file may be left,
  every cache entry must load (checksum), and the exit code must be 130 (SIGINT) or 143
  (SIGTERM). A last round resumes the interrupted generation with ``--resume``.

    python -m bench.reliability --kills 20 --json bench/results/reliability_cpu.json
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BenchParser, machine, write_result

BUDGET = ["--n-images", "24", "--iters", "150", "--quiet", "--no-human-report"]
JOB = ["--target", "tflite-int8", *BUDGET]
EXIT_BY_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}


def dgh_deploy(args: list[str], cache: Path) -> subprocess.Popen[str]:
    """A job as a user starts it: its own process, its own cache folder."""
    env = {**os.environ, "DGH_DEPLOY_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-m", "dgh_deploy", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def result_problems(out: Path) -> list[str]:
    """What is wrong with ``out`` as a finished result: report, every artifact it lists, stray files."""
    problems = []
    report_path = out / "report.json"
    try:
        report = json.loads(report_path.read_text())
    except (OSError, ValueError) as exc:
        return [f"report.json unreadable ({type(exc).__name__})"]
    for role, art in report.get("artifacts", {}).items():
        f = out / art["path"]
        if not f.is_file() or f.stat().st_size != art["bytes"]:
            problems.append(f"artifact {role} ({art['path']}) missing or of another size")
    strays = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    strays += [p.name for p in out.iterdir() if p.name.endswith(".part")]
    problems += [f"stray {name}" for name in strays]
    return problems


def cache_problems(cache: Path) -> list[str]:
    """Every cache entry loads and passes its checksum; no partial file is left."""
    from dgh_deploy.calibration import CalibrationSet
    from dgh_deploy.errors import DGHError

    problems = [f"partial cache file {p.name}" for p in cache.glob("*.part")]
    for entry in cache.glob("*.npz"):
        try:
            CalibrationSet.load(entry)
        except DGHError as err:
            problems.append(f"cache entry {entry.name}: {err}")
    return problems


def report_id(out: Path) -> str:
    """Which run wrote ``out`` (its report's creation: the per-stage times differ run to run)."""
    try:
        return json.dumps(json.loads((out / "report.json").read_text())["times_s"], sort_keys=True)
    except (OSError, ValueError, KeyError):
        return ""


def concurrent(work: Path) -> dict[str, Any]:
    cache = work / "cache-concurrent"
    t0 = time.perf_counter()
    jobs = [dgh_deploy(["--target", "sim", *BUDGET, "--out", str(work / f"concurrent{i}")], cache) for i in (0, 1)]
    codes = [job.wait() for job in jobs]
    seconds = time.perf_counter() - t0
    cached = []
    for i in (0, 1):
        report = json.loads((work / f"concurrent{i}" / "report.json").read_text()) if codes[i] == 0 else {}
        cached.append(report.get("calibration", {}).get("cached"))
    return {"exit_codes": codes, "cached": cached, "generated": cached.count(False),
            "cache_entries": len(list(cache.glob("*.npz"))), "cache_problems": cache_problems(cache),
            "seconds": round(seconds, 1), "passed": codes == [0, 0] and sorted(cached) == [False, True]
            and not cache_problems(cache)}


def timeline(out: Path) -> list[tuple[str, float]]:
    """(stage, end second) of a finished run, from its report's per-stage times."""
    times = json.loads((out / "report.json").read_text())["times_s"]
    t, ends = 0.0, []
    for stage, seconds in times.items():
        t += seconds
        ends.append((stage, t))
    return ends


def stage_at(ends: list[tuple[str, float]], t: float, startup: float) -> str:
    for stage, end in ends:
        if t < startup + end:
            return stage if t >= startup else "start-up"
    return "after the job"


def kill_round(i: int, rng: random.Random, out: Path, cache: Path, span: float, ends: list[tuple[str, float]],
               startup: float) -> dict[str, Any]:
    """One job, killed at a random moment; the state of ``out`` and the cache afterwards."""
    sig = rng.choice([signal.SIGINT, signal.SIGTERM])
    at = rng.uniform(0.2, span)
    before = report_id(out)
    args = [*JOB, "--out", str(out)] + (["--no-cache"] if i % 2 else [])
    job = dgh_deploy(args, cache)
    time.sleep(at)
    job.send_signal(sig)
    _, err = job.communicate()
    after = report_id(out)
    code = job.returncode
    finished = code == 0
    problems = result_problems(out) + cache_problems(cache)
    if not finished and after != before:
        problems.append("an interrupted job changed --out")
    if not finished and code != EXIT_BY_SIGNAL[sig]:
        problems.append(f"exit code {code}, not {EXIT_BY_SIGNAL[sig]}")
    lines = [ln for ln in err.splitlines() if ln.startswith("dgh-deploy")]
    return {"round": i, "signal": sig.name, "at_s": round(at, 2), "stage": stage_at(ends, at, startup),
            "cached_run": i % 2 == 0, "exit_code": code, "finished": finished, "last_line": lines[-1] if lines else "",
            "problems": problems}


def resume_after_kill(out: Path, cache: Path, ends: list[tuple[str, float]], startup: float) -> dict[str, Any]:
    """SIGTERM in the middle of generation, then ``--resume``: the job completes from the checkpoint."""
    gen_end = dict(ends).get("generation", 5.0)
    job = dgh_deploy([*JOB, "--no-cache", "--out", str(out)], cache)
    time.sleep(startup + 0.6 * gen_end)
    job.send_signal(signal.SIGTERM)
    job.communicate()
    checkpoint = out.with_name(out.name + ".generation.ckpt")
    had_checkpoint = checkpoint.is_file()
    resumed = dgh_deploy([*JOB, "--no-cache", "--resume", "--out", str(out)], cache)
    _, err = resumed.communicate()
    return {"killed_exit_code": job.returncode, "checkpoint_written": had_checkpoint,
            "resumed_exit_code": resumed.returncode, "resumed_log": [ln for ln in err.splitlines() if "resum" in ln],
            "problems": result_problems(out), "checkpoint_left": checkpoint.exists()}


def run(args: Any) -> dict[str, Any]:
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="dgh-reliability-"))
    try:
        result: dict[str, Any] = {"machine": machine(), "job": " ".join(JOB), "seed": args.seed}
        print("concurrent jobs on one cache key ...", flush=True)
        result["concurrent"] = concurrent(work)
        out, cache = work / "out", work / "cache"
        t0 = time.perf_counter()
        first = dgh_deploy([*JOB, "--no-cache", "--out", str(out)], cache)
        first.communicate()
        span = time.perf_counter() - t0
        ends = timeline(out)
        startup = max(0.0, span - ends[-1][1])
        result["full_run_s"] = round(span, 1)
        result["timeline_s"] = [(stage, round(end, 2)) for stage, end in ends]
        rounds = []
        for i in range(args.kills):
            rounds.append(kill_round(i, rng, out, cache, span * 1.05, ends, startup))
            r = rounds[-1]
            print(f"kill {i + 1}/{args.kills}: {r['signal']} at {r['at_s']} s ({r['stage']}), exit {r['exit_code']}, "
                  f"problems: {r['problems'] or 'none'}", flush=True)
        result["kills"] = rounds
        result["resume"] = resume_after_kill(out, cache, ends, startup)
        result["corrupt_after_kills"] = sum(bool(r["problems"]) for r in rounds)
        result["passed"] = (result["concurrent"]["passed"] and result["corrupt_after_kills"] == 0
                            and result["resume"]["resumed_exit_code"] == 0 and not result["resume"]["problems"])
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = BenchParser("reliability", __doc__)
    ap.add_argument("--kills", type=int, default=20, help="interrupted jobs (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments and signals")
    ap.add_json()
    args = ap.parse(argv)
    result = run(args)
    stages = sorted({r["stage"] for r in result["kills"]})
    print(f"{len(result['kills'])} kills across {', '.join(stages)}: {result['corrupt_after_kills']} left anything "
          f"corrupt; concurrent jobs: {result['concurrent']['generated']} generated, passed "
          f"{result['concurrent']['passed']}; resume passed {result['resume']['resumed_exit_code'] == 0}")
    if args.json:
        write_result(args.json, result)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
