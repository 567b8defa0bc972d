"""DGH ablation: each component off in turn, judged by the ``sim`` target's top-1.

Variants: full DGH; per-batch statistics instead of the exact joint ones (batches of 32);
image pipeline off (no extra pixels, crop, flip or smoothing); output (stretching) loss off;
plus the references noise, bns and 256 real images.

    .venv/bin/python -m bench.ablation                          # ResNet-20, 256 x 500, 2 threads
    .venv/bin/python bench/ablation.py --iters 100 --val-limit 2000 --variants dgh,no-output-loss
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

from bench import common
from bench.evaluation import float_top1, load_val, sim_top1

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


def run(args: argparse.Namespace, variants: list[str]) -> dict:
    """Every variant's top-1 at W8A4 and W4A8; written to ``--json`` after each variant (a stopped
    run keeps what it measured)."""
    common.set_threads(args.threads)
    from dgh_deploy.generation import make_calibration_set
    from dgh_deploy.loading import load_model

    model = load_model(args.model, args.weights, imgsz=args.imgsz)
    val = load_val(model, args.val_data, args.val_limit)
    res: dict = {"model": model.name, "n_images": args.n_images, "iters": args.iters,
                 "device": common.device_label(args.device, args.threads),
                 "float_top1": float_top1(model, val), "variants": {}}
    print(f"# {model.name}: {args.n_images} images x {args.iters} iterations; float top-1 {res['float_top1']:.2f} "
          f"on {len(val.labels)} test images")
    for name in variants:
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
        if args.json:
            common.write_result(args.json, res, indent=2)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = common.BenchParser("ablation", __doc__)
    ap.add_generation_run()
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_json(help="write the results here (JSON), after every variant")
    args = ap.parse(argv)
    variants = common.split_list(args.variants)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:  # before anything runs (it used to stop at the first unknown one, after the others ran)
        return ap.fail(f"unknown variant '{unknown[0]}' (one of {', '.join(VARIANTS)})")
    if rc := ap.check_assets(args.weights, args.val_data, args.real_calib if "real" in variants else None):
        return rc
    run(args, variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
