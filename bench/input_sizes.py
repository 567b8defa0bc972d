"""Real input sizes on a CPU: the default job at 640 and 224 pixels, and what full-size generation would cost.

    python -m bench.input_sizes --cases yolov5n:640 --seeds 0,1,2
    python -m bench.input_sizes --cases lite0:224 --calibs dgh,real --seeds 0,1,2

Each (case, calibration, seed) is one default ``dgh-deploy --target tflite-int8`` job in its own
process from a cold cache (images and inductor kernels), as a user's first job runs. Recorded: the
wall time, the report's stage times, the generation budget the job chose, the estimate it printed
before generating against the time generation took, and the metric:

- detectors (``yolov5n:SIZE``): mAP50-95 of float and int8 on coco128's val images (``--val-data``);
- the 224-pixel classifier (``lite0:224``: EfficientNet-Lite0 with ImageNet weights, bench/zoo):
  there are no labelled ImageNet images here, so top-1 agreement of the int8 file (LiteRT) with
  the float model on coco128's 128 val images, natural images the model never saw. ``real``
  calibrates the same job on coco128's train images (120 + 8 held out: all there are).

Then, in this process on the same machine, ``--before-steps`` steps of generation at the full size
only (what every job ran before coarse-to-fine: the same images, iterations and memory layout)
are timed, and that generation's time is projected from them: at 640 a whole run would take an
hour here, so "before" is a projection from timed steps, and says so.

Results accumulate in ``--json`` by run: a run already there is skipped (``--force`` redoes it),
so an interrupted bench continues where it stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common

LITE0 = str(common.REPO / "bench" / "zoo" / "efficientnet_lite0.py") + ":efficientnet_lite0"
AGREEMENT_IMAGES = 128


@dataclass(frozen=True)
class SizeCase:
    name: str
    model: str
    weights: str | None
    imgsz: int
    val_data: str | None  # a data YAML (detectors); None: agreement on ``natural``
    natural: str  # folder of natural images (agreement with float; a classifier's check)
    real: str  # real calibration images: the folder (classifier) or the data YAML (detector)


def size_cases(assets: Path) -> dict[str, SizeCase]:
    coco = assets / "coco128"
    yaml, val, train = str(coco / "coco128.yaml"), str(coco / "images" / "val2017"), str(coco / "images" / "train2017")
    v5 = str(assets / "yolov5n" / "yolov5n-coco-v6.1.pt")
    return {
        "yolov5n:640": SizeCase("yolov5n:640", "yolov5n", v5, 640, yaml, val, yaml),
        "yolov5n:320": SizeCase("yolov5n:320", "yolov5n", v5, 320, yaml, val, yaml),
        "lite0:224": SizeCase("lite0:224", LITE0, None, 224, None, val, train),
    }


def job_command(case: SizeCase, calib: str, seed: int, out: Path, cache: Path, threads: int,
                scales: str | None, job_args: str = "") -> list[str]:
    command = [sys.executable, "-m", "dgh_deploy", "--target", "tflite-int8", "--model", case.model,
               "--imgsz", str(case.imgsz), "--seed", str(seed), "--out", str(out), "--cache-dir", str(cache),
               "--threads", str(threads), "--no-human-report", *(["--scales", scales] if scales else []),
               *job_args.split()]
    if case.weights:
        command += ["--weights", case.weights]
    if case.val_data:
        command += ["--val-data", case.val_data]
    if calib == "real":
        command += ["--calib", f"real:{case.real}"]
        if case.val_data is None:  # the folder holds 128 images: 120 to calibrate, 8 held out
            command += ["--n-images", "120", "--holdout", "8"]
    return command


def run_job(case: SizeCase, calib: str, seed: int, threads: int, scales: str | None,
            job_args: str = "") -> dict[str, Any]:
    """One cold job in its own process: wall time, stage times, budget, estimate and metric."""
    with tempfile.TemporaryDirectory(prefix="input-sizes-") as tmp:
        out = Path(tmp) / "out"
        command = job_command(case, calib, seed, out, Path(tmp) / "cache", threads, scales, job_args)
        t0 = time.perf_counter()
        # A user's first job compiles the fused BN kernels too: no inductor cache from an earlier job.
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TORCHINDUCTOR_CACHE_DIR": str(Path(tmp) / "inductor")}
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"the job failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
        report = json.loads((out / "report.json").read_text())
        record = _record(report, wall)
        if case.val_data is None:
            record["agreement"] = natural_agreement(case, out / report["artifacts"]["model"]["path"], threads)
    return record


def _record(report: dict[str, Any], wall: float) -> dict[str, Any]:
    cal, m = report["calibration"], report["metrics"]
    record: dict[str, Any] = {
        "wall_s": round(wall, 1), "times_s": report["times_s"], "images": cal["images"],
        "held_out": cal["held_out"], "budget": cal.get("budget"), "stages": cal["settings"].get("stages"),
        "generation_s": cal["stats"].get("time_s"), "estimated_s": cal["stats"].get("estimated_s"),
        "stage_s": cal["stats"].get("stage_s"), "precision": cal["settings"].get("precision"),
        "converter": report["target"].get("converter"), "data_free": m.get("data_free"),
        "load_after": common.load_average(),
    }
    if "float" in m:
        metric = m["metric"]
        record.update(metric=metric, float=m["float"][metric], quantized=m["quantized"][metric])
    return record


def natural_agreement(case: SizeCase, tflite: Path, threads: int) -> dict[str, float]:
    """Top-1 agreement of the int8 file (LiteRT) with the float model on natural images."""
    from dgh_deploy.generation.baselines import real_images
    from dgh_deploy.loading import load_model
    from dgh_deploy.runtime.base import TorchRunner
    from dgh_deploy.runtime.litert_runner import LiteRTRunner
    from dgh_deploy.tasks import get_task

    model = load_model(case.model, case.weights, None, case.imgsz)
    images, _, _ = real_images(model, case.natural, AGREEMENT_IMAGES)
    reference = TorchRunner(model.module).infer_all(images)
    candidate = LiteRTRunner(tflite, num_threads=threads).infer_all(images)
    return {**get_task(model.task).agreement(reference, candidate), "images": len(images)}


def full_size_step_s(case: SizeCase, n_images: int, iters: int, steps: int) -> dict[str, Any]:
    """Seconds per step of full-size-only generation (the default before coarse-to-fine) of
    ``n_images``, from a run of ``steps`` steps after a one-step warm-up run in this process
    (oneDNN builds its kernels at a shape's first call), and that generation's projected time."""
    from dgh_deploy.generation.config import job_recipe
    from dgh_deploy.generation.engine import Generator
    from dgh_deploy.loading import load_model

    model = load_model(case.model, case.weights, None, case.imgsz)
    recipe = job_recipe("dgh", None, "cpu", module=model.module)  # the full size only
    for k in (1, steps):
        gen = Generator(model, n_images, k, config=recipe)
        try:
            out = gen.run(progress=False)
        finally:
            gen.close()
    step = out.stats["time_s"] / steps
    return {"step_s": round(step, 3), "steps_timed": steps, "chunk": out.stats["chunk"],
            "retained_graphs": out.stats["retained_graphs"], "projected_generation_s": round(step * iters, 1)}


def main(argv: list[str] | None = None) -> int:
    p = common.BenchParser("input_sizes", __doc__)
    p.add_argument("--cases", default="yolov5n:640", help="comma-separated: yolov5n:640, yolov5n:320, lite0:224")
    p.add_argument("--calibs", default="dgh", help="comma-separated: dgh, real")
    p.add_seeds("0")
    p.add_argument("--before-steps", type=int, default=3, help="full-size steps timed for the projection (0: none)")
    p.add_argument("--scales", default=None, help="the jobs' --scales instead of their default (recorded in the "
                                                  "run's name)")
    p.add_argument("--job-args", default="", help="more options for every job, e.g. '--weight-rounding gptq' "
                                                   "(recorded in the run's name)")
    p.add_argument("--force", action="store_true", help="run again what the results file already holds")
    p.add_threads()
    p.add_json(str(common.RESULTS / "input_sizes_cpu.json"))
    args = p.parse(argv)
    all_cases = size_cases(args.assets)
    names = common.split_list(args.cases)
    if unknown := [n for n in names if n not in all_cases]:
        return p.fail(f"unknown case {', '.join(unknown)} (one of {', '.join(all_cases)})")
    results = _load(args.json)
    results["machine"] = common.machine()
    for name in names:
        case = all_cases[name]
        entry = results["cases"].setdefault(name, {"runs": {}})
        for calib in common.split_list(args.calibs):
            for seed in common.parse_seeds(args.seeds):
                key = run_key(calib, seed, args.scales, args.job_args)
                if key in entry["runs"] and not args.force:
                    continue
                entry["runs"][key] = record = run_job(case, calib, seed, args.threads, args.scales, args.job_args)
                print(f"{name} {key}: {_line(record)}", flush=True)
                _save(args.json, results)
        dgh = [r for k, r in entry["runs"].items() if k.startswith("dgh") and r.get("budget")]
        if args.before_steps and dgh and ("full_size" not in entry or args.force):
            budget = dgh[0]["budget"]
            entry["full_size"] = full_size_step_s(case, dgh[0]["images"] + dgh[0]["held_out"], budget["iters"],
                                                  args.before_steps)
            print(f"{name} full size only: {entry['full_size']}", flush=True)
            _save(args.json, results)
    return 0


def run_key(calib: str, seed: int, scales: str | None, job_args: str) -> str:
    """A run's name in the results file: the calibration, then what differs from the default job."""
    name = f"{calib}[{scales}]" if scales else calib
    return f"{name} {' '.join(job_args.split())}:seed{seed}" if job_args.strip() else f"{name}:seed{seed}"


def _line(r: dict[str, Any]) -> str:
    quality = (f"{r['metric']} float {r['float']:.2f} int8 {r['quantized']:.2f}" if "metric" in r
               else f"top-1 agreement {r['agreement']['top1_agreement']:.2f}")
    return (f"{r['wall_s']:.0f} s (generation {r['generation_s'] or 0:.0f} s, estimated {r['estimated_s'] or 0:.0f}); "
            f"{quality}")


def _load(path: str | None) -> dict[str, Any]:
    if path and Path(path).is_file():
        return json.loads(Path(path).read_text())
    return {"bench": "input_sizes", "cases": {}}


def _save(path: str | None, results: dict[str, Any]) -> None:
    if path:
        common.write_result(path, results)


if __name__ == "__main__":
    sys.exit(main())
