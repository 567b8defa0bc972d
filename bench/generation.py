"""DGH generation speed and quality: this project's generator against Sony MCT 2.6.1's.

Runs both on the same model, image count, iterations, device and threads, one after the
other in this process, and prints image-iterations per second, their ratio, peak memory,
the raw forward+backward-to-input rate of the model (the ceiling), and the ``sim`` target's
top-1 at W8A4 and W4A8 for each image set beside 256 real calibration images.

Ours runs once per ``--precisions`` (default fp32,bf16: bf16 autocast is dropped, with a note,
where the device has no native bfloat16), interleaved ``--repeats`` times so that a shared
machine's load falls on both alike; each run's rate is printed with the load average beside it,
and the rows are ours fp32, ours bf16 and MCT with their ratios.

    .venv/bin/python -m bench.generation                       # ResNet-20, 256 x 500, CPU, 2 threads
    .venv/bin/python -m bench.generation --iters 100 --repeats 3 --skip-mct --skip-quality   # fp32 vs bf16
    .venv/bin/python bench/generation.py --iters 50 --val-limit 2000 --skip-mct
    python bench/generation.py --device cuda --threads 8 --mct-path /path/to/wheels
    .venv/bin/python bench/generation.py --model yolov5n --weights ../shared/assets/yolov5n/yolov5n-coco-v6.1.pt \\
        --imgsz 320 --n-images 64 --iters 200                   # a detector (speed only)

MCT runs with its own defaults (batch 32, 32 extra pixels, fp16 autocast on CUDA) except
for the image count and iterations. On CPU our generator keeps freed memory in the heap while
it runs (``dgh_deploy.generation.memory.keep_freed_memory``); MCT runs without it unless
``--mct-keep-freed-memory`` is given. ``--mct-path`` puts a folder of the user's (an MCT
checkout or unpacked wheels) first on ``sys.path``; nothing else in bench/ edits ``sys.path``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import statistics
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from bench import common
from bench.evaluation import PeakMemory, float_top1, load_val, sim_top1

if TYPE_CHECKING:
    import torch


def ceiling_rate(module: torch.nn.Module, imgsz: tuple[int, int], batch: int, device: str,
                 channels_last: bool, repeats: int = 5, precision: str = "fp32") -> float:
    """Images/s of forward + backward to the input alone: no statistics, no augmentation (under
    bf16 autocast for ``precision`` bf16)."""
    import copy

    import torch

    net = copy.deepcopy(module).eval().to(device)
    for p in net.parameters():
        p.requires_grad_(False)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    x = torch.randn(batch, 3, *imgsz, device=device).contiguous(memory_format=fmt).requires_grad_(True)

    def step() -> None:
        x.grad = None
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = net(x)
        sum(o.float().sum() for o in (out if isinstance(out, (list, tuple)) else [out])).backward()

    step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    _sync(device)
    return batch * repeats / (time.perf_counter() - t0)


def warm_up(device: str) -> None:
    """Start the device's libraries (CUDA context, cuDNN, cuBLAS) before anything is timed:
    whichever generator ran first would otherwise pay it (seconds on a GPU)."""
    import torch

    x = torch.randn(8, 3, 32, 32, device=device, requires_grad=True)
    conv = torch.nn.Conv2d(3, 8, 3).to(device)
    conv(x).sum().backward()
    torch.ones(4, 4, device=device).matmul(torch.ones(4, 4, device=device))
    _sync(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def run_ours(model: object, n: int, iters: int, device: str, seed: int, precision: str = "fp32") -> dict:
    from dgh_deploy.generation import DGHConfig, make_calibration_set

    config = replace(DGHConfig(), precision=precision)
    load = common.load_average()
    with PeakMemory(device) as mem:
        t0 = time.perf_counter()
        cs = make_calibration_set(model, "dgh", n, iters, seed=seed, device=device, config=config,  # type: ignore[arg-type]
                                  progress=True)
        wall = time.perf_counter() - t0
    return {"images": cs.images, "wall_s": wall, "rate": n * iters / wall, "peak_mb": mem.peak_mb,
            "chunk": cs.stats["chunk"], "final_bn_loss": cs.stats["final_losses"].get("bn"),
            "precision": cs.settings["precision"], "load_before": load, "load_after": common.load_average()}


def usable_precisions(wanted: list[str], device: str) -> list[str]:
    """``wanted`` less bf16 where ``device`` has no native bfloat16 (it would be emulated)."""
    import torch

    from dgh_deploy.generation.precision import native_bf16

    if "bf16" in wanted and not native_bf16(torch.device(device)):
        print(f"# bf16 skipped: {device} has no native bfloat16 arithmetic")
        return [p for p in wanted if p != "bf16"]
    return wanted


def run_ours_interleaved(model: object, args: argparse.Namespace, precisions: list[str]) -> dict[str, dict]:
    """Ours at each precision, ``args.repeats`` rounds of fp32 then bf16: per precision the median
    run (its images are the first run's: a seed gives the same images every time), and every run."""
    runs: dict[str, list[dict]] = {p: [] for p in precisions}
    images: dict[str, object] = {}
    for p in precisions:  # untimed: the first run of each precision would pay for oneDNN's kernel set-up
        run_ours(model, args.n_images, 1, args.device, args.seed, p)
    for _ in range(args.repeats):
        for p in precisions:
            r = run_ours(model, args.n_images, args.iters, args.device, args.seed, p)
            images.setdefault(p, r.pop("images"))
            runs[p].append(r)
            print(f"ours {p}: {r['wall_s']:.1f} s, {r['rate']:.0f} image-iterations/s, peak {r['peak_mb']:.0f} MiB "
                  f"(load {r['load_before']} -> {r['load_after']})", flush=True)
    out = {}
    for p, rs in runs.items():
        rate = statistics.median(r["rate"] for r in rs)
        median = min(rs, key=lambda r: abs(r["rate"] - rate))
        out[p] = {**median, "rate": rate, "images": images[p], "runs": rs}
    return out


def add_mct_path(mct_path: str | None) -> None:
    """``--mct-path``: put the user's folder (an MCT checkout or unpacked wheels) first on sys.path.
    This is a user option for an external package, not an import hack; the bench modules
    themselves are importable through the editable install and never edit sys.path."""
    if mct_path and mct_path not in sys.path:
        sys.path.insert(0, mct_path)


def run_mct(model: object, n: int, iters: int, device: str, mct_path: str | None,
            keep_freed_memory: bool = False) -> dict:
    """Sony MCT's DGH images for ``model`` (its defaults but ``n`` and ``iters``), timed."""
    add_mct_path(mct_path)
    import model_compression_toolkit as mct
    import torch

    from dgh_deploy.tasks import get_task

    cfg = mct.data_generation.get_pytorch_data_generation_config(n_iter=iters)
    # The module our generator differentiates: for detectors, the raw head maps MCT stretches too.
    module = get_task(model.task).prepare_for_generation(model).to(device)  # type: ignore[attr-defined]
    from dgh_deploy.generation.memory import keep_freed_memory as keep

    allocator = keep() if keep_freed_memory and device == "cpu" else contextlib.nullcontext()
    load = common.load_average()
    with allocator, PeakMemory(device) as mem:
        t0 = time.perf_counter()
        imgs = mct.data_generation.pytorch_data_generation_experimental(
            model=module, n_images=n, output_image_size=tuple(model.imgsz), data_generation_config=cfg)  # type: ignore[attr-defined]
        wall = time.perf_counter() - t0
    module.to("cpu")
    images = torch.cat([t.detach().float().cpu() for t in imgs]).numpy()
    return {"images": images, "wall_s": wall, "rate": n * iters / wall, "peak_mb": mem.peak_mb,
            "version": getattr(mct, "__version__", "?"), "load_before": load, "load_after": common.load_average()}


def ours_key(precision: str) -> str:
    """Where a precision's run goes in the result file: ``ours`` (fp32, as before bf16 existed), ``ours_bf16``."""
    return "ours" if precision == "fp32" else f"ours_{precision}"


def run(args: argparse.Namespace) -> dict:
    import torch

    common.set_threads(args.threads)
    from dgh_deploy.generation import make_calibration_set
    from dgh_deploy.loading import load_model

    model = load_model(args.model, args.weights, imgsz=args.imgsz)
    name = common.device_label(args.device, args.threads)
    print(f"# {model.name}, {args.n_images} images x {args.iters} iterations on {name}, torch {torch.__version__}")

    res: dict = {"model": model.name, "n_images": args.n_images, "iters": args.iters, "device": name,
                 "machine": common.machine(), "torch": torch.__version__, "repeats": args.repeats}
    warm_up(args.device)
    precisions = usable_precisions(common.split_list(args.precisions), args.device)
    ours_by = run_ours_interleaved(model, args, precisions)
    first = ours_by[precisions[0]]
    for p in precisions:
        key = "ceiling_rate" if p == "fp32" else f"ceiling_rate_{p}"
        res[key] = ceiling_rate(model.module, model.imgsz, first["chunk"], args.device, channels_last=True,
                                precision=p)
        print(f"ceiling {p} (fwd+bwd to input, batch {first['chunk']}): {res[key]:.0f} images/s")
    sets = {}
    for p, ours in ours_by.items():
        res[ours_key(p)] = {k: v for k, v in ours.items() if k != "images"}
        sets["dgh (ours)" if p == "fp32" else f"dgh (ours, {p})"] = ours["images"]
    if "fp32" in ours_by and "bf16" in ours_by:
        res["bf16_over_fp32"] = ours_by["bf16"]["rate"] / ours_by["fp32"]["rate"]
        print(f"ours bf16 over ours fp32: {res['bf16_over_fp32']:.2f}x")
    if not args.skip_mct:
        mct_res = run_mct(model, args.n_images, args.iters, args.device, args.mct_path, args.mct_keep_freed_memory)
        mct_res["keep_freed_memory"] = args.mct_keep_freed_memory
        print(f"MCT {mct_res['version']}: {mct_res['wall_s']:.1f} s, {mct_res['rate']:.0f} image-iterations/s, "
              f"peak {mct_res['peak_mb']:.0f} MiB (load {mct_res['load_before']} -> {mct_res['load_after']})")
        res["mct"] = {k: v for k, v in mct_res.items() if k != "images"}
        for p, ours in ours_by.items():
            key = "speedup" if p == "fp32" else f"speedup_{p}"
            res[key] = ours["rate"] / mct_res["rate"]
            print(f"ours {p} over MCT: {res[key]:.2f}x")
        sets["dgh (MCT)"] = mct_res["images"]

    if not args.skip_quality and model.task == "classify":  # sim top-1: classifiers only
        val = load_val(model, args.val_data, args.val_limit)
        real = make_calibration_set(model, f"real:{args.real_calib}", 256, 0, progress=False).images
        sets["real (256)"] = real
        sets["noise"] = make_calibration_set(model, "noise", args.n_images, 0, seed=args.seed).images
        res["float_top1"] = float_top1(model, val)
        print(f"top-1 on {len(val.labels)} test images: float {res['float_top1']:.2f}")
        res["top1"] = {}
        for label, images in sets.items():
            row = {f"W{w}A{a}": sim_top1(model, images, val, w, a) for w, a in ((8, 4), (4, 8))}
            res["top1"][label] = row
            print(f"  {label:12s} " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = common.BenchParser("generation", __doc__)
    ap.add_generation_run()
    ap.add_argument("--precisions", default="fp32,bf16",
                    help="our generator's precisions, run interleaved (bf16 only where the device has it)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of our runs (each precision once a round)")
    ap.add_argument("--skip-mct", action="store_true", help="only this project's generator")
    ap.add_argument("--mct-path", default=None, help="a folder to put on sys.path for model_compression_toolkit")
    ap.add_argument("--skip-quality", action="store_true", help="speed only")
    ap.add_argument("--mct-keep-freed-memory", action="store_true",
                    help="run MCT under the allocator setting our generator uses on CPU (keep_freed_memory), "
                         "to show what of the ratio that setting makes")
    ap.add_json()
    args = ap.parse(argv)
    # The test images and real calibration images matter for classifiers only (a detector's run
    # is speed only), but a wrong path should stop the run before minutes of generation, not after.
    quality = not args.skip_quality
    if rc := ap.check_assets(args.weights, args.val_data if quality else None, args.real_calib if quality else None):
        return rc
    if bad := [p for p in common.split_list(args.precisions) if p not in ("fp32", "bf16")]:
        return ap.fail(f"unknown precision {', '.join(bad)} (fp32, bf16)")
    if args.repeats < 1:
        return ap.fail(f"--repeats {args.repeats} is not a positive count")
    if not args.skip_mct:
        add_mct_path(args.mct_path)
        if importlib.util.find_spec("model_compression_toolkit") is None:
            return ap.fail("Sony MCT (model_compression_toolkit) is not installed: pip install -e '.[bench]' "
                           "(./install.sh installs it), pass --mct-path, or --skip-mct")
    res = run(args)
    if args.json:
        common.write_result(args.json, res, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
