"""Calibration sources over several seeds: the ``sim`` target's top-1 per (source, seed).

One DGH or bns set per seed says little when two sources differ by a few test images; this
generates each (source, seed) set once into ``--sets`` (kept: a second run, or one on another
machine, evaluates what is there), then scores every set with the ``sim`` target beside 256 real
images, and prints the per-seed results with their mean.

    .venv/bin/python bench/seeds.py --model cifar_resnet56 --weights ../shared/assets/cifar10/resnet56-4bfd9763.th \
        --seeds 0,1,2 --sets out/seeds_r56 --json bench/results/seeds_r56.json
    python bench/seeds.py ... --device cuda --skip-eval      # generate on a GPU, score elsewhere
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # an installed dgh_deploy wins
from bench._generation_eval import ASSETS, load_val, sim_top1


def set_path(folder: Path, source: str, seed: int) -> Path:
    return folder / f"{source}_seed{seed}.npz"


def generate(model: object, sources: list[str], seeds: list[int], n: int, iters: int, device: str,
             folder: Path) -> dict:
    from dgh_deploy.artifacts import atomic_path
    from dgh_deploy.generation import make_calibration_set

    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for seed in seeds:
        for src in sources:
            path = set_path(folder, src, seed)
            if path.exists():
                continue
            t0 = time.perf_counter()
            cs = make_calibration_set(model, src, n, iters if src in ("dgh", "bns") else 0, seed=seed,  # type: ignore[arg-type]
                                      device=device, progress=False)
            wall = time.perf_counter() - t0
            with atomic_path(path) as tmp, tmp.open("wb") as f:  # a handle: savez would append .npz
                np.savez_compressed(f, images=cs.images)
            made[f"{src}/{seed}"] = {"wall_s": round(wall, 2), "final_bn": cs.stats.get("final_losses", {}).get("bn"),
                                    "device": device}
            print(f"generated {src} seed {seed}: {wall:.1f} s on {device}", flush=True)
    return made


def evaluate(model: object, sources: list[str], seeds: list[int], bits: list[str], folder: Path) -> dict:
    from dgh_deploy.cli import parse_bits
    from dgh_deploy.generation import make_calibration_set

    cifar = ASSETS / "cifar10"
    val = load_val(model, str(cifar / "test"), None)
    real = make_calibration_set(model, f"real:{cifar / 'calib'}", 256, 0, progress=False).images  # type: ignore[arg-type]
    out: dict = {}
    for b in bits:
        wb, ab = parse_bits(b)
        out[f"{b}/real"] = sim_top1(model, real, val, wb, ab)
        print(f"{b} real {out[f'{b}/real']:.2f}", flush=True)
        for src in sources:
            tops = []
            for seed in seeds:
                images = np.load(set_path(folder, src, seed))["images"]
                tops.append(sim_top1(model, images, val, wb, ab))
                out[f"{b}/{src}/{seed}"] = tops[-1]
            out[f"{b}/{src}/mean"] = statistics.fmean(tops)
            print(f"{b} {src:6s} " + " ".join(f"{t:.2f}" for t in tops) + f"  mean {out[f'{b}/{src}/mean']:.2f}",
                  flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cifar_resnet56")
    ap.add_argument("--weights", default=str(ASSETS / "cifar10" / "resnet56-4bfd9763.th"))
    ap.add_argument("--sources", default="dgh,bns,noise")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--n-images", type=int, default=256)
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--bits", default="W4A8,W8A4")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sets", required=True, help="folder of generated sets (made if missing, reused if there)")
    ap.add_argument("--skip-eval", action="store_true", help="generate only")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from dgh_deploy.loading import load_model

    model = load_model(args.model, args.weights)
    sources, seeds = args.sources.split(","), [int(s) for s in args.seeds.split(",")]
    folder = Path(args.sets)
    res: dict = {"model": model.name, "n_images": args.n_images, "iters": args.iters}
    res["generated"] = generate(model, sources, seeds, args.n_images, args.iters, args.device, folder)
    if not args.skip_eval:
        res["top1"] = evaluate(model, sources, seeds, args.bits.split(","), folder)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
