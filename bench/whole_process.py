"""Generation as a user's process runs it, this tree against an earlier commit's, side by side.

    python -m bench.whole_process --baseline a5838b5 --rounds 2
    python -m bench.whole_process --baseline a5838b5 --model yolov5n --weights ASSETS/yolov5n/... --n-images 64

Each round runs one fresh ``dgh-deploy generate`` process of ``--baseline`` (a commit, taken out of
this repository into a temporary folder by ``git archive``) and one of this tree, in turns, with
the same model, images, iterations and seed and each tree's own default settings otherwise; the time
is the whole process, start-up and imports included. The ratio is baseline over this tree, per round,
with their median. The default baseline, a5838b5, is the code before coarse-to-fine generation and
before the input-size work (issue 27 measured against it); its default precision was fp32.

Both trees run in this venv's interpreter, so only the code differs. A round's load average is
recorded: on a machine shared with other jobs the times say little.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common

DEFAULT_BASELINE = "a5838b5"


def export_tree(commit: str, into: Path) -> Path:
    """``commit``'s files under ``into``, laid out as the installed package (``targets/`` and ``models/``
    reached as ``dgh_deploy.targets`` and ``dgh_deploy.models``)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(common.REPO), "archive", commit], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    for package in ("targets", "models"):
        link = into / "dgh_deploy" / package
        if not link.exists():
            link.symlink_to(Path("..") / package)
    return into


def generate_command(args: Any, out: Path, extra: str = "") -> list[str]:
    return [sys.executable, "-m", "dgh_deploy", "generate", "--model", args.model, "--weights", args.weights,
            "--n-images", str(args.n_images), "--iters", str(args.iters), "--seed", str(args.seed),
            "--out", str(out), *extra.split()]


def split_variant(variant: str, scratch: Path) -> tuple[dict[str, str], str]:
    """A variant's environment (its ``NAME=value`` words; the value ``{fresh}``: a new empty folder,
    e.g. ``TORCHINDUCTOR_CACHE_DIR={fresh}`` for a first run on a machine) and its options."""
    env, options = {}, []
    for word in variant.split():
        name, eq, value = word.partition("=")
        if eq and name.isupper() and not name.startswith("-"):
            env[name] = tempfile.mkdtemp(dir=scratch) if value == "{fresh}" else value
        else:
            options.append(word)
    return env, " ".join(options)


def run_tree(tree: Path, args: Any, scratch: Path, variant: str = "") -> dict[str, Any]:
    """One whole ``generate`` process of ``tree`` (with ``variant``'s environment and options): its wall
    time and the load average after it."""
    out = scratch / f"{tree.name}.npz"
    variant_env, extra = split_variant(variant, scratch)
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(args.threads), **variant_env}
    t0 = time.perf_counter()
    proc = subprocess.run(generate_command(args, out, extra), cwd=scratch, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: generate failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    out.unlink(missing_ok=True)
    return {"wall_s": round(wall, 1), "load_after": common.load_average()}


def main(argv: list[str] | None = None) -> int:
    p = common.BenchParser("whole_process", __doc__)
    p.add_model()
    p.add_argument("--baseline", default=DEFAULT_BASELINE, help="the commit to compare with")
    p.add_argument("--n-images", type=int, default=256)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--variants", default="", help="';'-separated options for more runs of this tree in each "
                                                  "round, e.g. '--scales 0.5:0.4,1:0.6' (each against the baseline); "
                                                  "NAME=value words set the environment ('{fresh}': an empty folder)")
    p.add_threads()
    p.add_json(str(common.RESULTS / "whole_process_r20_cpu.json"))
    args = p.parse(argv)
    if rc := p.check_assets(args.weights):
        return rc
    results: dict[str, Any] = {"bench": "whole_process", "machine": common.machine(), "model": args.model,
                               "n_images": args.n_images, "iters": args.iters, "threads": args.threads,
                               "baseline": args.baseline, "rounds": []}
    variants = [v.strip() for v in args.variants.split(";") if v.strip()]
    if variants:
        results["variants"] = variants
    with tempfile.TemporaryDirectory(prefix="whole-process-") as tmp:
        scratch = Path(tmp)
        base = export_tree(args.baseline, scratch / "baseline")
        for r in range(args.rounds):
            rnd = {"baseline": run_tree(base, args, scratch)}
            for run, extra in [("this", ""), *((v, v) for v in variants)]:
                rnd[run] = run_tree(common.REPO, args, scratch, extra)
                rnd[run]["ratio"] = round(rnd["baseline"]["wall_s"] / rnd[run]["wall_s"], 3)
            results["rounds"].append(rnd)
            print(f"round {r}: baseline {rnd['baseline']['wall_s']} s; " + "; ".join(
                f"{run}: {rnd[run]['wall_s']} s, {rnd[run]['ratio']:.2f}x" for run in ["this", *variants]), flush=True)
    results["median_ratio"] = statistics.median(r["this"]["ratio"] for r in results["rounds"])
    print(f"median {results['median_ratio']:.2f}x over {args.rounds} rounds ({results['machine']})")
    if args.json:
        common.write_result(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
