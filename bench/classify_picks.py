"""A 224-pixel classifier over seeds and picks: the int8 file's agreement with float, DGH against real.

The classifier twin of ``bench/detect_picks.py`` and ``bench/tflite_ranges.py``. EfficientNet-Lite0
(ImageNet weights, ``bench/zoo``) has no labelled ImageNet images here, so each build is scored by
how closely its int8 file (LiteRT) follows the float model on coco128's 128 val images, natural
images it never saw: top-1 agreement (one image is 0.78 points of it) and the logits' SQNR in dB.
Three whole default jobs, one per seed, differ from real calibration by a few images either way;
this makes one set per (source, seed) and builds every pick of it by every range method, so a
source is judged by its mean and spread over 9 builds.

- ``dgh``: the default job's set (``dgh-deploy generate`` with the CPU default budget for 224 px:
  128 + 16 images); pick k is the set rotated by 16 k images, another 128 to calibrate on.
- ``real``: coco128's 128 train images, as ``--calib real:`` takes them in ``bench.input_sizes``
  (120 to calibrate, 8 held out); pick k rotates by 8 k. The seed does not change real images.

Each build is the tflite-int8 target's own (float conversion once, shared; calibration, quantizer,
checks), with ``--act-range`` set by the method (``percentile:P`` sets ``--percentile P``; a method
ending in ``/gptq`` GPTQ-rounds the weights, ``--weight-rounding gptq``; the others round to nearest,
the classifiers' default; ``^H`` sets ``--output-headroom H``, ``minmax^1`` the logits' range as the
set gives it). Sets go to ``--sets``, finished builds to ``--json``: stop and run again to continue.

    .venv/bin/python -m bench.classify_picks --methods minmax,mse --json bench/results/classify_picks_lite0_cpu.json
    .venv/bin/python -m bench.classify_picks --natural cifar --json bench/results/classify_picks_lite0_cifar_cpu.json

``--natural cifar`` measures agreement on 1,000 CIFAR-10 test images instead (``NATURAL``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from bench.common import set_path
from bench.input_sizes import AGREEMENT_IMAGES, LITE0
from bench.tflite_ranges import apply_method

IMGSZ = 224
HOLDOUT = {"dgh": 16, "real": 8}  # the 224 job's hold-out of its 144 images; real's as bench.input_sizes
REAL_IMAGES = 128  # all of coco128's train images
# Where agreement is measured: coco128 val (the measure, 128 images: one is 0.78 points), or
# 1,000 CIFAR-10 test images (spread evenly over its classes) upscaled to 224, natural photographs
# of ten ImageNet-like subjects, at low resolution: a finer reading of the same thing.
NATURAL = {"coco": ("coco128/images/val2017", AGREEMENT_IMAGES), "cifar": ("cifar10/test", 1000)}


def make_set(source: str, seed: int, path: Path, train: str) -> None:
    """One (source, seed) set, saved to ``path``: the default job's DGH set, or every real train image."""
    import dgh_deploy

    t0 = time.perf_counter()
    if source == "real":
        dgh_deploy.generate(LITE0, imgsz=IMGSZ, calib=f"real:{train}", n_images=REAL_IMAGES, out=str(path),
                            progress=False)
    else:
        dgh_deploy.generate(LITE0, imgsz=IMGSZ, calib=source, n_images=128 + HOLDOUT[source], seed=seed,
                            out=str(path), progress=False)
    print(f"made {path.name} in {time.perf_counter() - t0:.0f} s", flush=True)


def seeds_of(source: str, seeds: list[int]) -> list[int]:
    """The seeds a source is built for: real images are the same whatever the seed, so one."""
    return seeds[:1] if source == "real" else seeds


def pick(path: Path, source: str, k: int) -> Any:
    """The calibration images of pick ``k``: the set rotated by ``k`` hold-outs, less its hold-out."""
    from dgh_deploy.calibration import CalibrationSet

    cs = CalibrationSet.load(path)
    rotated = CalibrationSet(np.roll(cs.images, k * HOLDOUT[source], axis=0), cs.source,
                             {**cs.settings, "rotated_by": k * HOLDOUT[source]}, cs.stats)
    return rotated.split(HOLDOUT[source])[0]


class Scorer:
    """One tflite-int8 target, float conversion and float reference for every build."""

    def __init__(self, natural: str, n_images: int, threads: int) -> None:
        from dgh_deploy.generation.baselines import real_images
        from dgh_deploy.loading import load_model
        from dgh_deploy.runtime.base import TorchRunner
        from dgh_deploy.targets import get_target
        from dgh_deploy.tasks import get_task

        self.target = get_target("tflite-int8")
        self.model = self.target.deploy_form(load_model(LITE0, None, None, IMGSZ))
        self.task = get_task(self.model.task, self.model)
        self.target.options = replace(self.target.options, threads=threads)
        self.target.progress = False
        self.early = self.target.preflight(self.model)
        self.images, _, _ = real_images(self.model, natural, n_images)
        self.reference = TorchRunner(self.model.module).infer_all(self.images)

    def score(self, calib: Any, method: str) -> dict[str, float]:
        """Agreement with float of the file built from ``calib`` with ``method``'s activation ranges."""
        apply_method(self.target, method)
        with tempfile.TemporaryDirectory(prefix="dgh-bench-classify-") as tmp:
            result = self.target.build(self.model, calib, Path(tmp), self.early)
            candidate = result.runner.infer_all(self.images)
        return {k: round(v, 3) for k, v in self.task.agreement(self.reference, candidate).items()}


def summary(state: dict[str, Any]) -> str:
    from bench.results_doc import classify_picks_table, markdown

    return "\n".join([f"Measured on {state['machine']}; top-1 agreement with float on {state['natural']}", "",
                      *markdown(classify_picks_table(state))])


def run(args: argparse.Namespace) -> dict[str, Any]:
    sources, methods = common.split_list(args.sources), common.split_list(args.methods)
    seeds = common.parse_seeds(args.seeds)
    coco = Path(args.assets) / "coco128" / "images"
    folder = Path(args.sets)
    folder.mkdir(parents=True, exist_ok=True)
    state = common.read_state(args.json, {"builds": {}})
    from dgh_deploy.targets.tflite.target import installed_converter

    natural, n_natural = NATURAL[args.natural]
    state.update(machine=common.machine(), model="EfficientNet-Lite0", imgsz=IMGSZ, converter=installed_converter(),
                 natural=f"{n_natural} images of {natural}")
    for src in sources:
        for seed in seeds_of(src, seeds):
            if not set_path(folder, src, seed).is_file():
                make_set(src, seed, set_path(folder, src, seed), str(coco / "train2017"))
    todo = [(m, src, seed, k) for m in methods for src in sources for seed in seeds_of(src, seeds)
            for k in range(args.picks) if f"{m}|{src}|{seed}|{k}" not in state["builds"]]
    print(f"{len(todo)} builds to do ({len(state['builds'])} already in {args.json})", flush=True)
    scorer = Scorer(str(Path(args.assets) / natural), n_natural, args.threads) if todo else None
    common.run_pending(args.json, state, "builds", todo,
                       lambda m, src, seed, k: scorer.score(pick(set_path(folder, src, seed), src, k), m),
                       lambda got: f"{got['top1_agreement']:.2f}% {got['output_sqnr_db']:.2f} dB", common.pick_label)
    print(summary(state))
    return state


def main(argv: list[str] | None = None) -> int:
    p = common.BenchParser("classify_picks", __doc__)
    p.add_argument("--methods", default="minmax", help="tflite-int8 --act-range values; percentile:P sets "
                                                        "--percentile P")
    p.add_argument("--sources", default="dgh,real")
    p.add_argument("--natural", default="coco", choices=sorted(NATURAL), help="the images agreement is measured "
                                                                             "on (see NATURAL)")
    p.add_seeds()
    p.add_argument("--picks", type=int, default=3)
    p.add_threads(2)
    p.add_argument("--sets", default=str(common.WORK / "picks" / "sets_lite0"))
    p.add_json(str(common.RESULTS / "classify_picks_lite0_cpu.json"),
               help="finished builds (JSON): a second run continues from them")
    args = p.parse(argv)
    if rc := p.check_assets(str(Path(args.assets) / "coco128" / "images")):
        return rc
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
