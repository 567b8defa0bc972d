"""The bundled depthwise classifier on every target, by calibration source and seed: top-1 per build.

MobileNetV2's depthwise convolutions are where hardware-friendly int8 (per-tensor, every layer
quantized) breaks, and where the DGH paper claims its gain. This generates each (source, seed)
set once into ``--sets`` (``bench.seeds``'s generator: DGH, BNS and noise at the job's classifier
budget), takes 256 real CIFAR-10 training images as the real-data reference, and builds, for every
set, each target the way the job does (its own calibrator and converter): ``tflite-int8`` (scored on
LiteRT), ``tensorrt-int8`` (the Q/DQ model on ONNX Runtime), ``sim`` W8A8 with per-tensor weights
(the hardware-friendly case) and ``sim`` W4A8. Every build is scored on the same CIFAR-10 test
images. Finished builds are kept in ``--json``: stop and run again to continue.

    .venv/bin/python -m bench.depthwise_targets --seeds 0,1,2 --val-limit 2000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from bench.common import set_path
from bench.evaluation import float_top1, load_val, top1
from bench.seeds import generate

# name -> (target, options, target settings): the builds every set gets
BUILDS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "tflite-int8": ("tflite-int8", {}, {}),
    "tensorrt-int8": ("tensorrt-int8", {}, {}),
    "sim W8A8 per-tensor": ("sim", {"per_tensor": True}, {}),
    "sim W4A8": ("sim", {"weight_bits": 4}, {}),
}


def build_top1(model: Any, images: np.ndarray, source: str, build: str, val: Any, threads: int) -> float:
    from dgh_deploy.calibration import CalibrationSet
    from dgh_deploy.targets import TargetOptions, get_target

    name, options, settings = BUILDS[build]
    target = get_target(name, **settings)
    target.options = TargetOptions(threads=threads, **options)
    with tempfile.TemporaryDirectory(prefix="dgh-bench-depthwise-") as tmp:
        result = target.build(model, CalibrationSet(images, source), Path(tmp))
        return top1(result.runner, val)


def sets(args: argparse.Namespace, model: Any) -> dict[str, np.ndarray]:
    """label ('dgh seed 0', 'real') -> calibration images; generated sets are made once into ``--sets``."""
    from dgh_deploy.generation import make_calibration_set

    seeds, sources = common.parse_seeds(args.seeds), common.split_list(args.sources)
    folder = Path(args.sets)
    generate(model, sources, seeds, args.n_images, args.iters, "cpu", folder)
    # a set may hold more (bench.edge's DGH set keeps the job's held-out images after the first n)
    out = {f"{src} seed {seed}": np.load(set_path(folder, src, seed))["images"][: args.n_images]
           for src in sources for seed in seeds}
    out["real"] = make_calibration_set(model, f"real:{args.real_calib}", args.n_images, 0, progress=False).images
    return out


def summary(state: dict[str, Any]) -> str:
    from bench.results_doc import depthwise_targets_table, markdown

    return "\n".join([f"{state['model']} top-1 on {state['val_images']} test images (float {state['float']:.2f}), "
                      f"measured on {state['machine']}:", *markdown(depthwise_targets_table(state))])


def run(args: argparse.Namespace) -> dict[str, Any]:
    common.set_threads(args.threads)
    from dgh_deploy.loading import load_model

    model = load_model(args.model)
    val = load_val(model, args.val_data, args.val_limit)
    state = common.read_state(args.json, {"top1": {}})
    state.update(machine=common.machine(), model=model.name, sources=common.split_list(args.sources),
                 params=sum(p.numel() for p in model.module.parameters()), val_images=len(val.labels),
                 n_images=args.n_images, iters=args.iters)
    state.setdefault("float", float_top1(model, val))
    calib = sets(args, model)
    todo = [(b, label) for label in calib for b in BUILDS if f"{b}|{label}" not in state["top1"]]
    common.run_pending(args.json, state, "top1", todo,
                       lambda build, label: build_top1(model, calib[label], label.split()[0], build, val, args.threads),
                       "{:.2f}".format, lambda build, label: f"{build} on {label}", indent=1)
    print(summary(state))
    return state


def main(argv: list[str] | None = None) -> int:
    ap = common.BenchParser("depthwise_targets", __doc__)
    ap.add_argument("--model", default="cifar_mobilenetv2", help="a built-in classifier with bundled weights")
    ap.add_argument("--sources", default="dgh,bns,noise")
    ap.add_seeds()
    ap.add_argument("--n-images", type=int, default=256)
    ap.add_argument("--iters", type=int, default=500, help="dgh and bns iterations (the classifier default)")
    ap.add_threads(2)
    ap.add_asset_argument("--val-data", common.CIFAR_TEST, "labelled test images (ImageFolder)")
    ap.add_asset_argument("--real-calib", common.CIFAR_CALIB, "the real calibration images' folder")
    ap.add_argument("--val-limit", type=int, default=None, help="score on this many test images (spread evenly)")
    ap.add_argument("--sets", default=str(common.WORK / "depthwise_sets"), help="folder of generated sets")
    ap.add_json(str(common.RESULTS / "depthwise_targets_mbv2_cpu.json"),
                help="finished builds (JSON): a second run continues from them")
    args = ap.parse(argv)
    if rc := ap.check_assets(args.val_data, args.real_calib):
        return rc
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
