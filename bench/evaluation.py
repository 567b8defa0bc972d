"""What the generation benches share: timing, peak memory, and the ``sim`` target's top-1.

Also a script: score saved image sets (``.npz`` files with an ``images`` array, as
``bench/seeds.py`` and ``bench/gpu_check.py`` write them) with the ``sim`` target's top-1,
beside the float model's, on a classifier's test images.

    python -m bench.evaluation out/seeds_r56/dgh_seed0.npz --model cifar_resnet56 \\
        --weights ../shared/assets/cifar10/resnet56-4bfd9763.th --bits W8A4,W4A8
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import common


class PeakMemory:
    """Peak RSS (CPU, sampled every 100 ms) or peak CUDA allocation during a ``with`` block, in MiB."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            time.sleep(0.1)  # seldom: a busy extra thread slows 2 OpenMP threads on 2 cores

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, rss_mb())


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class ValSet:
    images: np.ndarray
    labels: np.ndarray


def load_val(model: object, folder: str, limit: int | None) -> ValSet:
    """Labelled ImageFolder images, preprocessed once and reused for every evaluation."""
    from dgh_deploy.tasks.classify import evenly_spaced, list_image_folder

    files, labels, _ = list_image_folder(folder)
    idx = evenly_spaced(len(files), limit)
    x = np.stack([model.preprocessing.load(str(files[i]), model.imgsz) for i in idx])  # type: ignore[attr-defined]
    return ValSet(x, labels[idx])


def top1(runner: object, val: ValSet, batch: int = 500) -> float:
    logits = runner.infer_all(val.images, batch_size=batch)[0]  # type: ignore[attr-defined]
    return 100.0 * float((logits.argmax(1) == val.labels).mean())


def float_top1(model: object, val: ValSet) -> float:
    """Top-1 of the float model itself."""
    from dgh_deploy.runtime import TorchRunner

    return top1(TorchRunner(model.module), val)  # type: ignore[attr-defined]


def sim_top1(model: object, images: np.ndarray, val: ValSet, weight_bits: int, act_bits: int,
             source: str = "images", rounding: str = "") -> float:
    """Top-1 of the ``sim`` target (per-channel weights, mse activation ranges, ``rounding`` of the
    weights: the target's default unless given) calibrated on ``images``."""
    import tempfile

    from dgh_deploy.calibration import CalibrationSet
    from dgh_deploy.targets import TargetOptions, get_target

    target = get_target("sim", weight_rounding=rounding)
    target.options = TargetOptions(weight_bits=weight_bits, act_bits=act_bits, act_range="mse")
    with tempfile.TemporaryDirectory() as tmp:
        result = target.build(model, CalibrationSet(images, source), Path(tmp))  # type: ignore[arg-type]
        return top1(result.runner, val)


def main(argv: list[str] | None = None) -> int:
    ap = common.BenchParser("evaluation", __doc__)
    ap.add_argument("sets", nargs="+", help=".npz files with an 'images' array (N x 3 x H x W, model input space)")
    ap.add_model()
    ap.add_asset_argument("--val-data", common.CIFAR_TEST)
    ap.add_argument("--val-limit", type=int, default=None, help="evaluate on this many test images (spread evenly)")
    ap.add_argument("--bits", default="W8A4,W4A8")
    ap.add_threads()
    ap.add_json()
    args = ap.parse(argv)
    if rc := ap.check_assets(args.weights, args.val_data, *args.sets):
        return rc
    common.set_threads(args.threads)
    from dgh_deploy.cli import parse_bits
    from dgh_deploy.loading import load_model

    model = load_model(args.model, args.weights)
    val = load_val(model, args.val_data, args.val_limit)
    res: dict = {"model": model.name, "float_top1": float_top1(model, val), "top1": {}}
    print(f"# {model.name}: float top-1 {res['float_top1']:.2f} on {len(val.labels)} test images")
    for path in args.sets:
        images = np.load(path)["images"]
        row = {}
        for bits in common.split_list(args.bits):
            row[bits] = sim_top1(model, images, val, *parse_bits(bits))
        res["top1"][path] = row
        print(f"  {Path(path).name:24s} " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    if args.json:
        common.write_result(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
