"""GPU self-check of the generator (not a test: CI has no GPU). Prints one line per check."""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_generation_models import as_loaded, tiny_bn_net

from dgh_deploy.generation import DGHConfig, make_calibration_set
from dgh_deploy.generation.engine import Generator
from dgh_deploy.loading import load_model

dev = "cuda"
print(torch.__version__, torch.cuda.get_device_name(0), flush=True)

# 1. exact joint statistics on the GPU, float64: 4 chunks == 1 batch == CPU
model = as_loaded(tiny_bn_net().double())
grads = []
for device, chunk in (("cuda", 16), ("cuda", 4), ("cpu", 16)):
    g = Generator(model, 16, 3, seed=3, device=device, dtype=torch.float64, chunk=chunk,
                  config=DGHConfig(output_loss_multiplier=1e-2))
    x = g.initial_images().double().to(device).requires_grad_(True)
    g._compute_grads(x, 1)
    grads.append(x.grad.cpu())
rel = [float((a - grads[0]).norm() / grads[0].norm()) for a in grads[1:]]
print("exactness rel err (4 chunks, cpu):", rel, "OK" if max(rel) < 1e-10 else "FAIL", flush=True)

# 2. speed, fp32 and bf16 autocast, ResNet-20 (demo weights), 256 x 500
r20 = load_model("demo")
for label, cfg in (("fp32", DGHConfig()), ("bf16-amp", replace(DGHConfig(), amp=True))):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    cs = make_calibration_set(r20, "dgh", 256, 500, device=dev, config=cfg, progress=False)
    wall = time.perf_counter() - t0
    print(f"{label}: {wall:.1f} s, {256 * 500 / wall:.0f} image-it/s, final bn {cs.stats['final_losses']['bn']:.4f}, "
          f"peak {cs.stats['peak_memory_mb']:.0f} MiB, chunk {cs.stats['chunk']}", flush=True)

# 3. many images, small memory budget: chunked path on the GPU
torch.cuda.reset_peak_memory_stats()
cs = make_calibration_set(r20, "dgh", 4096, 3, device=dev, config=replace(DGHConfig(), memory_mb=256),
                          progress=False)
print(f"4096 images, 256 MiB budget: chunks {cs.stats['chunks']}, peak {cs.stats['peak_memory_mb']:.0f} MiB, "
      f"{4096 * 3 / cs.stats['time_s']:.0f} image-it/s", flush=True)
