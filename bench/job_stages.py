"""The whole detector job, stage by stage, for two versions of this project side by side.

    python -m bench.job_stages --before 1f38488                 # that commit against the working tree
    python -m bench.job_stages --before 1f38488 --iters 5       # the stages after generation only, quickly
    python -m bench.job_stages --before 1f38488 --before-python .venv-onnx2tf/bin/python
                                                  # that commit in the venv of its default converter

Each version runs ``dgh-deploy --target tflite-int8 --model yolov5n ... --imgsz 320 --val-data
coco128.yaml`` from a cold cache (a new cache folder per run) in its own process, one after the
other (``--repeats`` rounds, alternating), on the same machine. The stage times come from each
job's report.json (``times_s``), the wall time from this script. A version other than the
working tree is checked out into a temporary git worktree; ``dgh_deploy/targets`` and
``dgh_deploy/models`` are linked there to its top-level folders, as the package installs them.
Results go to ``--json`` (``bench/results/job_stages_yolov5n_cpu.json``); ``python -m
bench.results_doc`` renders the stage table into docs/results.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import common


@contextlib.contextmanager
def source_tree(ref: str | None) -> Iterator[Path]:
    """This repository at ``ref`` (a temporary worktree), or the working tree for None."""
    if ref is None:
        yield common.REPO
        return
    with tempfile.TemporaryDirectory(prefix="job-stages-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(common.REPO), "worktree", "add", "--detach", "-q", str(tree), ref], check=True)
        try:
            for package in ("targets", "models"):
                (tree / "dgh_deploy" / package).symlink_to(tree / package)
            yield tree
        finally:
            subprocess.run(["git", "-C", str(common.REPO), "worktree", "remove", "--force", str(tree)], check=False)


def run_job(tree: Path, python: str, case: common.Case, work: Path, iters: int | None,
            threads: int) -> dict[str, Any]:
    """One cold job of ``tree``'s code in ``python``: wall seconds, the report's stage times and its metrics."""
    out, cache = work / "out", work / "cache"
    command = [python, "-m", "dgh_deploy", "--target", "tflite-int8", "--model", case.model,
               "--weights", case.weights, "--imgsz", str(case.imgsz), "--val-data", case.val_data,
               "--out", str(out), "--cache-dir", str(cache), "--threads", str(threads), "--no-human-report",
               "--quiet", *(["--iters", str(iters)] if iters else [])]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"the job failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    return {"wall_s": round(wall, 1), "times_s": report["times_s"], "metric": m["metric"],
            "converter": report["target"].get("converter", "onnx2tf"),  # older reports: onnx2tf was the only one
            "float": m["float"][m["metric"]], "quantized": m["quantized"][m["metric"]],
            "load_after": common.load_average()}


def main(argv: list[str] | None = None) -> int:
    p = common.BenchParser("job_stages", __doc__)
    p.add_argument("--before", required=True, help="the git commit (or branch) to compare the working tree with")
    p.add_argument("--iters", type=int, default=None, help="generation iterations (default: the job's own)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--before-python", default=sys.executable, help="the Python (venv) the --before version runs in")
    p.add_argument("--after-python", default=sys.executable, help="the Python (venv) the working tree runs in")
    p.add_threads()
    p.add_json(str(common.RESULTS / "job_stages_yolov5n_cpu.json"))
    args = p.parse(argv)
    case = common.cases(args.assets)["yolov5n"]
    if rc := p.check_assets(*case.files(real=False)):
        return rc
    versions = {"before": args.before, "after": None}
    # Absolute but not resolved: a venv's python is a link out of the venv. (The job runs in a temp dir.)
    pythons = {"before": os.path.abspath(args.before_python), "after": os.path.abspath(args.after_python)}
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in versions}
    for _ in range(args.repeats):
        for label, ref in versions.items():
            with source_tree(ref) as tree, tempfile.TemporaryDirectory(prefix="job-stages-run-") as work:
                runs[label].append(run_job(tree, pythons[label], case, Path(work), args.iters, args.threads))
            r = runs[label][-1]
            print(f"{label}: {r['wall_s']:.0f} s, " + ", ".join(f"{k} {v:.0f}" for k, v in r["times_s"].items()))
    best = {label: min(r["wall_s"] for r in rs) for label, rs in runs.items()}
    result = {"model": case.model, "imgsz": case.imgsz, "iters": args.iters, "before": args.before,
              "after": _head(), "machine": common.machine(), "threads": args.threads, "runs": runs,
              "speedup": round(best["before"] / best["after"], 3)}
    print(f"after over before: {result['speedup']:.2f}x ({best['before']:.0f} s -> {best['after']:.0f} s)")
    if args.json:
        common.write_result(args.json, result)
    return 0


def _head() -> str:
    """The working tree's commit, marked when it has changes."""
    head = subprocess.run(["git", "-C", str(common.REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(common.REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("+changes" if dirty else "")


if __name__ == "__main__":
    sys.exit(main())
