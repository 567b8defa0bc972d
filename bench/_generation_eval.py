"""What the generation benchmarks share: timing, peak memory, and sim-target top-1."""

from __future__ import annotations

import argparse
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"


class PeakMemory:
    """Peak RSS (CPU, sampled every 100 ms) or peak CUDA allocation during a ``with`` block, in MiB."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakMemory:
        if self.cuda:
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


def sim_top1(model: object, images: np.ndarray, val: ValSet, weight_bits: int, act_bits: int,
             source: str = "images", rounding: str = "") -> float:
    """Top-1 of the ``sim`` target (per-channel weights, mse activation ranges, ``rounding`` of the
    weights: the target's default unless given) calibrated on ``images``."""
    import tempfile

    from dgh_deploy.calibration import CalibrationSet
    from dgh_deploy.targets import TargetOptions, get_target

    target = get_target("sim")
    target.options = TargetOptions(weight_bits=weight_bits, act_bits=act_bits, act_range="mse",
                                   weight_rounding=rounding)
    with tempfile.TemporaryDirectory() as tmp:
        result = target.build(model, CalibrationSet(images, source), Path(tmp))  # type: ignore[arg-type]
        return top1(result.runner, val)


def add_run_arguments(ap: argparse.ArgumentParser) -> None:
    """The model, budget and data options every generation bench shares."""
    ap.add_argument("--model", default="cifar_resnet20")
    ap.add_argument("--weights", default=str(ASSETS / "cifar10" / "resnet20-12fca82f.th"))
    ap.add_argument("--imgsz", type=int, default=None, help="input size (default: the model's own)")
    ap.add_argument("--n-images", type=int, default=256)
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-data", default=str(ASSETS / "cifar10" / "test"))
    ap.add_argument("--real-calib", default=str(ASSETS / "cifar10" / "calib"))
    ap.add_argument("--val-limit", type=int, default=None, help="evaluate on this many test images (spread evenly)")
