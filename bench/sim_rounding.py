"""The ``sim`` target's weight rounding, GPTQ against round-to-nearest, per calibration source.

    .venv/bin/python -m bench.sim_rounding --model cifar_resnet56 \\
        --weights ../shared/assets/cifar10/resnet56-4bfd9763.th --json bench/results/sim_rounding_r56_cpu.json

The DGH and bns sets are the job's cached ones (256 + 32 held out x 500 iterations, seed 0: run
``bench/compare.py`` or the job once first); noise and 256 real images are made here.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench import common
from bench.evaluation import load_val, sim_top1

CACHED = ("dgh", "bns")


def cached_set_path(model: object, source: str) -> Path:
    """The job's cache file of ``source``'s default CPU set (256 + 32 held out, 500 iterations, seed 0)."""
    from dgh_deploy import __version__
    from dgh_deploy.calibration import cache
    from dgh_deploy.generation.config import default_recipe

    key = cache.cache_key(model, source, 288, 500, 0, "cpu", version=__version__,  # type: ignore[arg-type]
                          recipe=default_recipe(source).hashed_settings())
    return cache.default_cache_dir() / f"{model.name}-{source}-{key}.npz"  # type: ignore[attr-defined]


def run(args: argparse.Namespace, model: object) -> dict:
    from dgh_deploy.calibration import CalibrationSet
    from dgh_deploy.cli import parse_bits
    from dgh_deploy.generation import make_calibration_set

    val = load_val(model, args.val_data, None)
    sets = {}
    for src in CACHED:
        sets[src] = CalibrationSet.load(cached_set_path(model, src)).split(32)[0].images
    sets["noise"] = make_calibration_set(model, "noise", 256, 0, seed=0, progress=False).images
    sets["real"] = make_calibration_set(model, f"real:{args.real_calib}", 256, 0, progress=False).images
    out: dict = {}
    for bits in common.split_list(args.bits):
        wb, ab = parse_bits(bits)
        for rounding in ("gptq", "nearest"):
            for src, images in sets.items():
                t0 = time.time()
                out[f"{bits}/{rounding}/{src}"] = top = sim_top1(model, images, val, wb, ab, src, rounding)
                print(f"{model.name} {bits} {rounding:8s} {src:6s} {top:.2f}  ({time.time() - t0:.0f} s)", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = common.BenchParser("sim_rounding", __doc__)
    ap.add_model()
    ap.add_argument("--bits", default="W4A8,W8A4")
    ap.add_threads()
    ap.add_asset_argument("--val-data", common.CIFAR_TEST, "labelled test images (ImageFolder)")
    ap.add_asset_argument("--real-calib", common.CIFAR_CALIB, "the 256 real calibration images' folder")
    ap.add_json()
    args = ap.parse(argv)
    if rc := ap.check_assets(args.weights, args.val_data, args.real_calib):
        return rc
    common.set_threads(args.threads)
    from dgh_deploy.loading import load_model

    model = load_model(args.model, args.weights)
    missing = [str(p) for p in (cached_set_path(model, src) for src in CACHED) if not p.is_file()]
    if missing:
        return ap.fail(f"no cached set {', '.join(missing)}: run bench/compare.py or a 'dgh-deploy' job on "
                       f"{model.name} (CPU defaults) once first")
    out = run(args, model)
    if args.json:
        common.write_result(args.json, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
