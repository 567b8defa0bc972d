"""Calibration sources on a detector over seeds and picks: mAP50-95 per job and each source's mean.

On YOLOv5n at 320 one 64-image job cannot rank calibration sources: two picks of the same real
images differ by up to 1.8 points. This makes one 72-image set per (source, seed) (dgh, bns and
noise as ``dgh-deploy generate`` makes them; real ones as 72-image windows of the real folder:
seeds 0, 1, 2 start at its beginning, middle and end) and runs a full job on each of its picks
(the set rotated by 8 images: another 64 to calibrate on, another 8 held out), for every target
asked for. ``tensorrt-int8:max`` or ``tensorrt-int8:percentile`` picks TensorRT's range method;
a plain target uses its default. Finished jobs are kept in ``--json``: stop and run it again to
continue; sets are kept in ``--sets`` (copy sets made elsewhere there, named SOURCE_seedN.npz).

    .venv/bin/python bench/detect_picks.py --targets tensorrt-int8:max,tensorrt-int8:percentile,tflite-int8 \\
        --json bench/results/picks_yolov5n_cpu.json
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench import common
from bench.common import Case, set_path

HOLDOUT = 8  # the job's default hold-out for 64 calibration images


def make_set(case: Case, source: str, seed: int, n: int, iters: int, path: Path) -> None:
    """One (source, seed) set of ``n`` images, saved atomically to ``path``. A generated source names
    its precision as ``bench/seeds.py`` labels it: ``dgh-bf16``; plain ``dgh`` is fp32, as every set
    before bf16 was, whatever the job's default on this machine."""
    import dgh_deploy
    from dgh_deploy.calibration import CalibrationSet

    t0 = time.perf_counter()
    source, _, precision = source.partition("-")
    if source == "real":
        every = dgh_deploy.generate(case.model, weights=case.weights, imgsz=case.imgsz, calib=f"real:{case.real}",
                                    n_images=count_images(case.real), progress=False)
        start = seed * (len(every) - n) // 2
        calib = CalibrationSet(every.images[start:start + n], every.source,
                               {**every.settings, "window_start": start, "n_images": n}, every.stats)
        calib.save(path)
    else:
        dgh_deploy.generate(case.model, weights=case.weights, imgsz=case.imgsz, calib=source, n_images=n,
                            iters=iters, seed=seed, precision=precision or "fp32", out=str(path), progress=False)
    print(f"made {path.name} in {time.perf_counter() - t0:.0f} s", flush=True)


def count_images(folder: str) -> int:
    from dgh_deploy.generation.baselines import list_images

    return len(list_images(Path(folder)))


def pick_path(folder: Path, source: str, seed: int, pick: int) -> Path:
    """The set rotated by ``pick * HOLDOUT`` images (pick 0 is the set itself)."""
    base = set_path(folder, source, seed)
    if pick == 0:
        return base
    path = folder / f"{source}_seed{seed}_pick{pick}.npz"
    if not path.is_file():
        from dgh_deploy.calibration import CalibrationSet

        cs = CalibrationSet.load(base)
        CalibrationSet(np.roll(cs.images, pick * HOLDOUT, axis=0), cs.source,
                       {**cs.settings, "rotated_by": pick * HOLDOUT}, cs.stats).save(path)
    return path


def run_job(case: Case, calib: Path, spec: str, work: Path, threads: int) -> tuple[float, float]:
    """(int8, float) mAP50-95 of one full job."""
    import dgh_deploy

    target, _, act_range = spec.partition(":")
    out = work / f"{calib.stem}-{spec.replace(':', '-')}"
    report = dgh_deploy.deploy(target=target, model=case.model, weights=case.weights, imgsz=case.imgsz,
                               calib=str(calib), val_data=case.val_data, out=str(out), threads=threads,
                               human_report=False, progress=False, act_range=act_range).report
    shutil.rmtree(out, ignore_errors=True)  # ~10 MB of models a job; the number is what is kept
    m = report.metrics
    return float(m.value(m.quantized) or 0.0), float(m.value(m.float_scores) or 0.0)


def summary(state: dict, specs: list[str], sources: list[str], seeds: list[int], picks: int) -> str:
    lines = [f"Measured on {state['machine']}; {state['model']} at {state['imgsz']}, mAP50-95 on its validation "
             f"data (float {state.get('float', float('nan')):.2f}); picks of one seed are separated by ',', "
             "seeds by ';'.", ""]
    for spec in specs:
        values = {src: [[state["jobs"].get(f"{spec}|{src}|{s}|{k}") for k in range(picks)] for s in seeds]
                  for src in sources}
        done = {src: [v for seed in rows for v in seed if v is not None] for src, rows in values.items()}
        means = {src: statistics.fmean(v) if v else None for src, v in done.items()}
        real = means.get("real")
        lines += [f"**{spec}**", "", "| source | picks | mean (jobs) | minus real |", "| --- | --- | --- | --- |"]
        for src, rows in values.items():
            picks_text = "; ".join(", ".join("-" if v is None else f"{v:.2f}" for v in seed) for seed in rows)
            mean = means[src]
            mean_text = "-" if mean is None else f"{mean:.2f} ({len(done[src])})"
            diff = "-" if mean is None or real is None else f"{mean - real:+.2f}"
            lines.append(f"| {src} | {picks_text} | {mean_text} | {diff} |")
        lines.append("")
    return "\n".join(lines)


def run(args: argparse.Namespace, case: Case) -> dict:
    """Make the missing sets, run every job not in ``--json`` yet (saved after each); the state."""
    sources, specs = common.split_list(args.sources), common.split_list(args.targets)
    seeds = common.parse_seeds(args.seeds)
    folder = Path(args.sets)
    folder.mkdir(parents=True, exist_ok=True)
    state = common.read_state(args.json, {"jobs": {}})
    from dgh_deploy.targets.tflite.target import installed_converter

    state.update(machine=common.machine(), model=case.model, imgsz=case.imgsz, converter=installed_converter())

    for src in sources:
        for seed in seeds:
            if not set_path(folder, src, seed).is_file():
                make_set(case, src, seed, args.n_images, args.iters, set_path(folder, src, seed))
    todo = [(spec, src, seed, k) for spec in specs for src in sources for seed in seeds for k in range(args.picks)
            if f"{spec}|{src}|{seed}|{k}" not in state["jobs"]]
    print(f"{len(todo)} jobs to do ({len(state['jobs'])} already in {args.json})", flush=True)
    work = folder.parent / "jobs"

    def job(spec: str, src: str, seed: int, k: int) -> float:
        value, state["float"] = run_job(case, pick_path(folder, src, seed, k), spec, work, args.threads)
        return value

    common.run_pending(args.json, state, "jobs", todo, job, "{:.2f}".format, common.pick_label)
    print(summary(state, specs, sources, seeds, args.picks))
    return state


def main(argv: list[str] | None = None) -> int:
    p = common.BenchParser("detect_picks", __doc__)
    p.add_argument("--model", default="yolov5n", help="a detector of bench.common's cases")
    p.add_argument("--sources", default="dgh,bns,noise,real")
    p.add_seeds()
    p.add_argument("--picks", type=int, default=3)
    p.add_argument("--targets", default="tensorrt-int8:max,tensorrt-int8:percentile,tflite-int8")
    p.add_argument("--n-images", type=int, default=64 + HOLDOUT)
    p.add_argument("--iters", type=int, default=200, help="dgh and bns iterations (the CPU default)")
    p.add_threads(None)
    p.add_argument("--sets", default=str(common.WORK / "picks" / "sets"))
    p.add_json(str(common.RESULTS / "picks_yolov5n_cpu.json"),
               help="finished jobs (JSON): a second run continues from them")
    args = p.parse(argv)
    return common.run_on_case(p, args, run, real="real" in common.split_list(args.sources))


if __name__ == "__main__":
    sys.exit(main())
