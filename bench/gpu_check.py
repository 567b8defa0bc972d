"""GPU self-check and timings of the generator (not a test: CI has no GPU).

    python -m bench.gpu_check [WEIGHTS] [OUT_DIR]       # or: python bench/gpu_check.py ...

WEIGHTS defaults to the shared ResNet-20 (ASSETS/cifar10/resnet20-12fca82f.th), OUT_DIR to the
current folder. Prints one line per check and writes ``gpu_check.json`` (and the 256 x 500 image
set, for the ``sim`` target on another machine: score it with ``python -m bench.evaluation``) to
OUT_DIR. Each check runs on its own, so one failure leaves the others' numbers; the exit status
is 1 when a check failed.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bench import common
from bench.tiny_models import as_loaded, tiny_bn_net

DEV = "cuda"


def run_check(results: dict, name: str, fn: Callable[[], None]) -> bool:
    """Run one check; a failure is printed and recorded as ``results[name] = "failed"``, and the others go on."""
    try:
        fn()
    except Exception:
        print(f"{name}: FAILED\n{traceback.format_exc()}", flush=True)
        results[name] = "failed"
        return False
    return True


def exactness(results: dict) -> None:
    """4 chunks == 1 batch == CPU, float64."""
    import torch

    from dgh_deploy.generation import DGHConfig
    from dgh_deploy.generation.engine import Generator

    model = as_loaded(tiny_bn_net().double())
    grads = []
    for device, chunk in (("cuda", 16), ("cuda", 4), ("cpu", 16)):
        g = Generator(model, 16, 3, seed=3, device=device, dtype=torch.float64, chunk=chunk,
                      config=DGHConfig(output_loss_multiplier=1e-2))
        x = g.initial_images().double().to(device).requires_grad_(True)
        g.compute_grads(x, 1)
        grads.append(x.grad.cpu())
    rel = [float((a - grads[0]).norm() / grads[0].norm()) for a in grads[1:]]
    results["exactness_rel_err"] = rel
    print("exactness rel err (4 chunks, cpu):", rel, "OK" if max(rel) < 1e-10 else "FAIL", flush=True)


def timed(results: dict, model: object, out: Path, label: str, n: int, iters: int, cfg: object,
          save: str | None = None) -> None:
    """One timed generation of ``n`` x ``iters`` on the GPU; ``save``: keep its images in ``out``."""
    import numpy as np
    import torch

    from dgh_deploy.generation import make_calibration_set

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    cs = make_calibration_set(model, "dgh", n, iters, device=DEV, config=cfg, progress=False)  # type: ignore[arg-type]
    wall = time.perf_counter() - t0
    row = {"n": n, "iters": iters, "wall_s": round(wall, 2), "rate": round(n * iters / wall),
           "final_bn": cs.stats["final_losses"]["bn"], "peak_mb": cs.stats["peak_memory_mb"],
           "chunk": cs.stats["chunk"], "cuda_graph": cs.stats.get("cuda_graph")}
    results[label] = row
    print(f"{label}: {row}", flush=True)
    if save:
        np.savez_compressed(out / save, images=cs.images)


def timings() -> list[tuple[str, int, int, object, str | None]]:
    """(label, images, iterations, config, file to save the images to) of every timed run."""
    from dgh_deploy.generation import DGHConfig

    return [
        ("r20_256x500_eager_fp32", 256, 500, replace(DGHConfig(), cuda_graphs=False), None),
        ("r20_256x500_graph_fp32", 256, 500, DGHConfig(), "r20_dgh_256x500_h100.npz"),
        ("r20_256x500_graph_bf16", 256, 500, replace(DGHConfig(), precision="bf16"), None),
        ("r20_1024x100_graph_fp32", 1024, 100, DGHConfig(), None),
        ("r20_4096x20_256MiB_graph_fp32", 4096, 20, replace(DGHConfig(), memory_mb=256), None),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = common.BenchParser("gpu_check", __doc__)
    ap.add_asset_argument("weights", common.R20_WEIGHTS, "the CIFAR ResNet-20 checkpoint", nargs="?")
    ap.add_argument("out_dir", nargs="?", default=".", help="where gpu_check.json goes (default: .)")
    args = ap.parse(argv)
    if rc := ap.check_assets(args.weights):
        return rc
    import torch

    if not torch.cuda.is_available():
        return ap.fail("no CUDA device: this check runs on a GPU machine")
    from dgh_deploy.loading import load_model

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    print(results, flush=True)
    ok = run_check(results, "exactness", lambda: exactness(results))
    r20 = load_model("cifar_resnet20", args.weights)
    for label, n, iters, cfg, save in timings():
        ok &= run_check(results, label,
                        lambda label=label, n=n, iters=iters, cfg=cfg, save=save:
                        timed(results, r20, out, label, n, iters, cfg, save))
    common.write_result(out / "gpu_check.json", results, indent=1, default=str)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
