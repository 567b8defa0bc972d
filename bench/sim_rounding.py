"""The ``sim`` target's weight rounding, GPTQ against round-to-nearest, per calibration source.

    .venv/bin/python bench/sim_rounding.py --model cifar_resnet56 \
        --weights ../shared/assets/cifar10/resnet56-4bfd9763.th --json bench/results/sim_rounding_r56_cpu.json

The DGH and bns sets are the job's cached ones (256 + 32 held out x 500 iterations, seed 0: run
``bench/compare.py`` or the job once first); noise and 256 real images are made here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # an installed dgh_deploy wins
from bench._generation_eval import ASSETS, load_val, sim_top1


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cifar_resnet20")
    ap.add_argument("--weights", default=str(ASSETS / "cifar10" / "resnet20-12fca82f.th"))
    ap.add_argument("--bits", default="W4A8,W8A4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from dgh_deploy.calibration import cache
    from dgh_deploy.calibration.calibration_set import CalibrationSet
    from dgh_deploy.cli import parse_bits
    from dgh_deploy.generation import make_calibration_set
    from dgh_deploy.loading import load_model

    cifar = ASSETS / "cifar10"
    model = load_model(args.model, args.weights)
    val = load_val(model, str(cifar / "test"), None)
    sets = {}
    for src in ("dgh", "bns"):
        path = cache.default_cache_dir() / f"{model.name}-{src}-{cache.cache_key(model, src, 288, 500, 0, 'cpu')}.npz"
        sets[src] = CalibrationSet.load(path).split(32)[0].images
    sets["noise"] = make_calibration_set(model, "noise", 256, 0, seed=0, progress=False).images
    sets["real"] = make_calibration_set(model, f"real:{cifar / 'calib'}", 256, 0, progress=False).images
    out: dict = {}
    for bits in args.bits.split(","):
        wb, ab = parse_bits(bits)
        for rounding in ("gptq", "nearest"):
            for src, images in sets.items():
                t0 = time.time()
                out[f"{bits}/{rounding}/{src}"] = top = sim_top1(model, images, val, wb, ab, src, rounding)
                print(f"{model.name} {bits} {rounding:8s} {src:6s} {top:.2f}  ({time.time() - t0:.0f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
