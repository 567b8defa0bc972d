"""GPU self-check and timings of the generator (not a test: CI has no GPU).

    python bench/_gpu_check.py WEIGHTS [OUT_DIR]

Prints one line per check and writes ``gpu_check.json`` (and the 256 x 500 image set, for the
``sim`` target on another machine) to OUT_DIR. Each check runs on its own, so one failure
leaves the others' numbers.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_generation_models import as_loaded, tiny_bn_net

from dgh_deploy.generation import DGHConfig, make_calibration_set
from dgh_deploy.generation.engine import Generator
from dgh_deploy.loading import load_model

DEV = "cuda"
WEIGHTS = sys.argv[1]
OUT = Path(sys.argv[2] if len(sys.argv) > 2 else ".")
results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
print(results, flush=True)


def check(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    """Run the decorated check now; a failure is printed and recorded, and the others go on."""

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        try:
            fn()
        except Exception:
            print(f"{name}: FAILED\n{traceback.format_exc()}", flush=True)
            results[name] = "failed"
        return fn

    return wrap


@check("exactness")
def _exactness() -> None:
    """4 chunks == 1 batch == CPU, float64."""
    model = as_loaded(tiny_bn_net().double())
    grads = []
    for device, chunk in (("cuda", 16), ("cuda", 4), ("cpu", 16)):
        g = Generator(model, 16, 3, seed=3, device=device, dtype=torch.float64, chunk=chunk,
                      config=DGHConfig(output_loss_multiplier=1e-2))
        x = g.initial_images().double().to(device).requires_grad_(True)
        g._compute_grads(x, 1)
        grads.append(x.grad.cpu())
    rel = [float((a - grads[0]).norm() / grads[0].norm()) for a in grads[1:]]
    results["exactness_rel_err"] = rel
    print("exactness rel err (4 chunks, cpu):", rel, "OK" if max(rel) < 1e-10 else "FAIL", flush=True)


r20 = load_model("cifar_resnet20", WEIGHTS)


def timed(n: int, iters: int, cfg: DGHConfig, label: str, save: str | None = None) -> None:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    cs = make_calibration_set(r20, "dgh", n, iters, device=DEV, config=cfg, progress=False)
    wall = time.perf_counter() - t0
    row = {"n": n, "iters": iters, "wall_s": round(wall, 2), "rate": round(n * iters / wall),
           "final_bn": cs.stats["final_losses"]["bn"], "peak_mb": cs.stats["peak_memory_mb"],
           "chunk": cs.stats["chunk"], "cuda_graph": cs.stats.get("cuda_graph")}
    results[label] = row
    print(f"{label}: {row}", flush=True)
    if save:
        np.savez_compressed(OUT / save, images=cs.images)


for label, n, iters, cfg, save in (
    ("r20_256x500_eager_fp32", 256, 500, replace(DGHConfig(), cuda_graphs=False), None),
    ("r20_256x500_graph_fp32", 256, 500, DGHConfig(), "r20_dgh_256x500_h100.npz"),
    ("r20_256x500_graph_bf16", 256, 500, replace(DGHConfig(), amp=True), None),
    ("r20_1024x100_graph_fp32", 1024, 100, DGHConfig(), None),
    ("r20_4096x20_256MiB_graph_fp32", 4096, 20, replace(DGHConfig(), memory_mb=256), None),
):
    check(label)(lambda n=n, iters=iters, cfg=cfg, label=label, save=save: timed(n, iters, cfg, label, save))

(OUT / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
