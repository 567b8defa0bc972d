"""Calibration sources over several seeds: the ``sim`` target's top-1 per (source, seed).

One DGH or bns set per seed says little when two sources differ by a few test images; this
generates each (source, seed) set once into ``--sets`` (kept: a second run, or one on another
machine, evaluates what is there), then scores every set with the ``sim`` target beside 256 real
images, and prints the per-seed results with their mean and spread.

``--precisions fp32,bf16`` adds a precision axis for the generated sources (dgh, bns): each set
is made once per precision, interleaved (seed by seed, fp32 then bf16), and labelled
``SOURCE-bf16`` (fp32 keeps the plain label and file name, so earlier sets stay valid).

    .venv/bin/python bench/seeds.py --model cifar_resnet56 --weights ../shared/assets/cifar10/resnet56-4bfd9763.th \\
        --seeds 0,1,2 --sets out/seeds_r56 --json bench/results/seeds_r56.json
    python -m bench.seeds ... --device cuda --skip-eval       # generate on a GPU, score elsewhere
    .venv/bin/python -m bench.seeds --model cifar_resnet20 --weights ../shared/assets/cifar10/resnet20-12fca82f.th \\
        --sources dgh --precisions fp32,bf16 --sets out/precision_r20 --json bench/results/precision_r20_cpu.json
    python -m bench.seeds --model cifar_resnet20 --weights ... --sources dgh --scales "1 0.5:0.6,1:0.4" \\
        --sets out/scales_r20 --json bench/results/seeds_r20_scales_cpu.json   # full size and coarse to fine
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench import common
from bench.common import set_path
from bench.evaluation import load_val, sim_top1

GENERATED = ("dgh", "bns")
FULL_SIZE = "1"  # the --scales schedule of full-size-only generation (sets keep their plain label)


def label(source: str, precision: str, scales: str = FULL_SIZE) -> str:
    """A set's name in files and results: the source, with ``-bf16`` for a bf16 set and ``@SCHEDULE``
    for a coarse-to-fine one (``--scales``)."""
    name = source if precision == "fp32" else f"{source}-{precision}"
    return f"{name}@{scales}" if scales != FULL_SIZE and source in GENERATED else name


def runs(sources: list[str], precisions: list[str], schedules: list[str] | None = None) -> list[tuple[str, str, str]]:
    """(source, precision, schedule) per set of one seed: generated sources once per precision and
    schedule, the others once."""
    return [(src, p, sc) for src in sources for p in (precisions if src in GENERATED else ["fp32"])
            for sc in ((schedules or [FULL_SIZE]) if src in GENERATED else [FULL_SIZE])]


def generate(model: object, sources: list[str], seeds: list[int], n: int, iters: int, device: str,
             folder: Path, precisions: list[str] | None = None, schedules: list[str] | None = None) -> dict:
    from dgh_deploy.generation import make_calibration_set
    from dgh_deploy.generation.config import default_recipe
    from dgh_deploy.generation.scales import parse_schedule

    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for seed in seeds:
        for src, precision, scales in runs(sources, precisions or ["fp32"], schedules):
            name = label(src, precision, scales)
            path = set_path(folder, name, seed)
            if path.exists():
                continue
            generated = src in GENERATED
            config = (replace(default_recipe(src), precision=precision, scales=parse_schedule(scales))
                      if generated else None)
            load = common.load_average()
            t0 = time.perf_counter()
            cs = make_calibration_set(model, src, n, iters if generated else 0, seed=seed,  # type: ignore[arg-type]
                                      device=device, config=config, progress=False)
            wall = time.perf_counter() - t0
            with common.atomic_open(path, "wb") as f:  # a handle: savez would append .npz to a name
                np.savez_compressed(f, images=cs.images)
            made[f"{name}/{seed}"] = {"wall_s": round(wall, 2), "final_bn": cs.stats.get("final_losses", {}).get("bn"),
                                      "device": device, "precision": cs.settings.get("precision"),
                                      "rate": round(n * iters / wall, 1) if generated else None, "load": load}
            print(f"generated {name} seed {seed}: {wall:.1f} s on {device} (load {load})", flush=True)
    return made


def evaluate(model: object, labels: list[str], seeds: list[int], bits: list[str], folder: Path,
             val_data: str, real_calib: str) -> tuple[dict, dict]:
    """``top1`` (``BITS/LABEL/SEED``, ``BITS/LABEL/mean``, ``BITS/real``) and each label's spread
    over the seeds (``BITS/LABEL``: sample standard deviation, lowest, highest)."""
    from dgh_deploy.cli import parse_bits
    from dgh_deploy.generation import make_calibration_set

    val = load_val(model, val_data, None)
    real = make_calibration_set(model, f"real:{real_calib}", 256, 0, progress=False).images  # type: ignore[arg-type]
    out: dict = {}
    spread: dict = {}
    for b in bits:
        wb, ab = parse_bits(b)
        out[f"{b}/real"] = sim_top1(model, real, val, wb, ab)
        print(f"{b} real {out[f'{b}/real']:.2f}", flush=True)
        for name in labels:
            tops = []
            for seed in seeds:
                images = np.load(set_path(folder, name, seed))["images"]
                tops.append(sim_top1(model, images, val, wb, ab))
                out[f"{b}/{name}/{seed}"] = tops[-1]
            out[f"{b}/{name}/mean"] = statistics.fmean(tops)
            spread[f"{b}/{name}"] = {"std": statistics.stdev(tops) if len(tops) > 1 else 0.0,
                                     "min": min(tops), "max": max(tops)}
            print(f"{b} {name:10s} " + " ".join(f"{t:.2f}" for t in tops) + f"  mean {out[f'{b}/{name}/mean']:.2f}"
                  f"  sd {spread[f'{b}/{name}']['std']:.2f}", flush=True)
    return out, spread


def run(args: argparse.Namespace) -> dict:
    common.set_threads(args.threads)
    from dgh_deploy.loading import load_model

    model = load_model(args.model, args.weights)
    sources, seeds = common.split_list(args.sources), common.parse_seeds(args.seeds)
    precisions = common.split_list(args.precisions)
    folder = Path(args.sets)
    res: dict = {"model": model.name, "n_images": args.n_images, "iters": args.iters,
                 "machine": common.machine(), "device": common.device_label(args.device, args.threads)}
    if precisions != ["fp32"]:
        res["precisions"] = precisions
    schedules = args.scales.split()
    if schedules != [FULL_SIZE]:
        res["scales"] = schedules
    res["generated"] = generate(model, sources, seeds, args.n_images, args.iters, args.device, folder, precisions,
                                schedules)
    if not args.skip_eval:
        labels = [label(*run) for run in runs(sources, precisions, schedules)]
        res["top1"], res["spread"] = evaluate(model, labels, seeds, common.split_list(args.bits), folder,
                                              args.val_data, args.real_calib)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = common.BenchParser("seeds", __doc__)
    ap.add_model("cifar_resnet56", common.R56_WEIGHTS)
    ap.add_argument("--sources", default="dgh,bns,noise")
    ap.add_argument("--precisions", default="fp32",
                    help="generation precisions of dgh and bns, e.g. fp32,bf16 (bf16 needs native bfloat16)")
    ap.add_seeds()
    ap.add_argument("--n-images", type=int, default=256)
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--scales", default=FULL_SIZE, help="resolution schedules of the generated sources, space-"
                                                        "separated (as dgh-deploy's --scales; 1: full size only); a "
                                                        "coarse-to-fine set is labelled SOURCE@SCHEDULE")
    ap.add_argument("--bits", default="W4A8,W8A4")
    ap.add_device()
    ap.add_threads()
    ap.add_asset_argument("--val-data", common.CIFAR_TEST, "labelled test images (ImageFolder)")
    ap.add_asset_argument("--real-calib", common.CIFAR_CALIB, "the 256 real calibration images' folder")
    ap.add_argument("--sets", required=True, help="folder of generated sets (made if missing, reused if there)")
    ap.add_argument("--skip-eval", action="store_true", help="generate only")
    ap.add_json()
    args = ap.parse(argv)
    evaluating = not args.skip_eval
    if rc := ap.check_assets(args.weights, args.val_data if evaluating else None,
                             args.real_calib if evaluating else None):
        return rc
    res = run(args)
    if args.json:
        common.write_result(args.json, res, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
