"""DGH ablation: each component off in turn, judged by the ``sim`` target's top-1.

Variants: full DGH; per-batch statistics instead of the exact joint ones (batches of 32);
image pipeline off (no extra pixels, crop, flip or smoothing); output (stretching) loss off;
plus the references noise, bns and 256 real images.

    .venv/bin/python bench/ablation.py                          # ResNet-20, 256 x 500, 2 threads
    .venv/bin/python bench/ablation.py --iters 100 --val-limit 2000 --variants dgh,no-output-loss
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1]))  # an installed dgh_deploy wins
from bench._generation_eval import add_run_arguments, load_val, sim_top1, top1

VARIANTS = ("dgh", "per-batch-stats", "no-pipeline", "no-output-loss", "bns", "noise", "real")


def variant_config(name: str) -> object:
    from dgh_deploy.generation import DGHConfig

    base = DGHConfig()
    return {
        "dgh": base,
        "per-batch-stats": replace(base, joint_stats=False, batch_size=32),
        "no-pipeline": replace(base, pipeline=False),
        "no-output-loss": replace(base, output_loss_multiplier=0.0),
    }[name]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(ap)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from dgh_deploy.generation import make_calibration_set
    from dgh_deploy.loading import load_model
    from dgh_deploy.runtime.base import TorchRunner

    model = load_model(args.model, args.weights, imgsz=args.imgsz)
    val = load_val(model, args.val_data, args.val_limit)
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    res: dict = {"model": model.name, "n_images": args.n_images, "iters": args.iters, "device": device,
                 "float_top1": top1(TorchRunner(model.module), val), "variants": {}}
    print(f"# {model.name}: {args.n_images} images x {args.iters} iterations; float top-1 {res['float_top1']:.2f} "
          f"on {len(val.labels)} test images")
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant '{name}' (one of {', '.join(VARIANTS)})")
        t0 = time.perf_counter()
        if name == "real":
            images = make_calibration_set(model, f"real:{args.real_calib}", args.n_images, 0).images
        elif name in ("noise", "bns"):
            images = make_calibration_set(model, name, args.n_images, args.iters, seed=args.seed,
                                          device=args.device, progress=False).images
        else:
            images = make_calibration_set(model, "dgh", args.n_images, args.iters, seed=args.seed, device=args.device,
                                          config=variant_config(name), progress=False).images  # type: ignore[arg-type]
        gen_s = time.perf_counter() - t0
        row = {f"W{w}A{a}": sim_top1(model, images, val, w, a) for w, a in ((8, 4), (4, 8))}
        res["variants"][name] = {**row, "generation_s": round(gen_s, 1)}
        print(f"  {name:16s} " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()) + f"   ({gen_s:.0f} s)",
              flush=True)
        if args.json:  # after every variant: a stopped run keeps what it measured
            Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
