"""docs/results.md and the README's results table, generated from the files in bench/results/.

    python bench/results_doc.py             # rewrite docs/results.md and the README's results block
    python bench/results_doc.py --check     # exit 1 if either differs from what would be written
    python -m bench.results_doc --check     # the same

Every figure in docs/results.md, and between the README's ``<!-- results:begin -->`` and
``<!-- results:end -->`` markers, is read from a JSON file that a bench script wrote: nobody types
a result by hand. After a bench script writes or updates a file in bench/results/, run this and
commit all three. Each table names the machine its file records; where a file records none, the
machine is named from the file name (``_cpu``, ``_h100``) and the table says so. A file no section
knows is still shown, as its flattened keys and values, under "Other result files".

Standard library only: the test that runs ``--check`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "results.md"
README = REPO / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

# Machines named from a file's name, for files that record none.
SUFFIX_MACHINES = {"cpu": "the 2-core CPU", "h100": "the H100"}
# Models named from a file's name, for files that record none.
NAME_MODELS = {"r20": "cifar_resnet20", "r56": "cifar_resnet56", "yolov5n": "yolov5n"}
SOURCE_ORDER = ("dgh", "bns", "noise", "real", "mct")
TARGET_ORDER = ("sim:W8A4", "sim:W4A8", "tflite-int8", "tensorrt-int8")
MODEL_ORDER = ("cifar_resnet20", "cifar_resnet56", "yolov5n", "yolov8n")
VARIANT_LABELS = {
    "dgh": "DGH",
    "per-batch-stats": "per-batch statistics instead of the whole set's",
    "no-pipeline": "no image pipeline (no extra pixels, flip, crop or smoothing)",
    "no-output-loss": "no output (stretching) loss",
    "bns": "bns (ZeroQ-style: per batch, no pipeline, no output loss)",
    "noise": "noise",
    "real": "real images",
}
# What a file's JSON does not say about how it was made: prose only, never a figure.
FILE_NOTES = {
    "detect_mct_state.json": "`python bench/compare.py --models yolov5n --sources mct,dgh,real --targets "
    "tflite-int8` with this file as `--state`: Sony MCT's own DGH images (source `mct`, its defaults) beside ours "
    "and real images. Made before YOLO models got the natural-image input prior, so its `dgh` set is an older one "
    "than `compare_state.json`'s.",
    "ablation_r20_cpu.json": "W4A8 here rounds weights to nearest: the file predates GPTQ as the `sim` default "
    "below 8-bit weights.",
    "ablation_r20_h100.json": "An earlier run, scored on part of the test set (`--val-limit`) and before the `sim` "
    "target corrected biases: its figures do not compare with the other files'.",
    "seeds_r56_seed1.json": "`python bench/ablation.py --model cifar_resnet56 --variants dgh,noise --seed 1`; "
    "W4A8 rounds weights to nearest (made before GPTQ became the `sim` default).",
    "seeds_r56_seed2.json": "`python bench/ablation.py --model cifar_resnet56 --variants dgh,noise --seed 2`; "
    "W4A8 rounds weights to nearest (made before GPTQ became the `sim` default).",
    "generation_r20_h100.json": "One fresh process, our generator first: its start-up (first use of each cuDNN "
    "kernel, model probes, capture of the CUDA graph) is inside its time. `gpu_check_h100.json` has warm runs.",
    "generation_r20_100_cpu.json": "Made before the flip and crop became one gather (same images; the current "
    "code's rate is a little higher).",
    "generation_r20_100_mct_keep_freed_cpu.json": "Made before the flip and crop became one gather (same images; "
    "the current code's rate is a little higher).",
    "generation_yolov5n_cpu.json": "Made before the flip and crop became one gather (same images; the current "
    "code's rate is a little higher).",
    "generation_yolov5n_30_mct_keep_freed_cpu.json": "Made before the flip and crop became one gather (same "
    "images; the current code's rate is a little higher). A short run weighs our fixed start-up more.",
    "gpu_check_h100.json": "`python -m bench.gpu_check WEIGHTS`: the runs in the order listed, one process (the "
    "first run includes start-up). `eager`: CUDA graph off; `bf16`: bfloat16 autocast; `256MiB`: "
    "`DGHConfig(memory_mb=256)`, which takes the two-pass path.",
}

# The same, shortened for the README's results block.
README_NOTES = {"generation_r20_h100.json": "one fresh process, start-up included"}
# The converter of a file's tflite-int8 jobs, where the file does not record it (made before
# litert-torch became the default).
FILE_CONVERTERS = {"compare_state.json": "onnx2tf", "edge_cpu.json": "onnx2tf"}

Table = tuple[list[str], list[list[str]]]


# ---------------------------------------------------------------------------------------------- helpers


def num(value: Any, digits: int = 2) -> str:
    """A figure as the tables print it: fixed decimals for floats, '-' for a missing value."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def signed(value: float) -> str:
    return f"{value:+.2f}"


def markdown(table: Table) -> list[str]:
    header, rows = table
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def ordered(items: Iterable[str], preferred: Iterable[str]) -> list[str]:
    """``items`` once each, those in ``preferred`` first and in its order, the rest as they come."""
    seen = list(dict.fromkeys(items))
    first = [x for x in preferred if x in seen]
    return first + [x for x in seen if x not in first]


def name_parts(name: str) -> list[str]:
    return Path(name).stem.split("_")


def machine_from_name(name: str) -> str:
    """The machine a file name says (``..._cpu.json``), marked as named from the file name."""
    for part in reversed(name_parts(name)):
        if part in SUFFIX_MACHINES:
            return f"{SUFFIX_MACHINES[part]} (named from the file name: the file records no machine)"
    return "not recorded"


def model_from_name(name: str) -> str:
    for part in name_parts(name):
        if part in NAME_MODELS:
            return NAME_MODELS[part]
    return Path(name).stem


def machine_of(name: str, data: dict) -> str:
    """The machine as the file records it (``machine``, else ``device``), else from its name."""
    for key in ("machine", "device"):
        if isinstance(data.get(key), str):
            return f"{data[key]} (the file's `{key}`)"
    return machine_from_name(name)


def converter_of(name: str, data: dict) -> str | None:
    """The tflite-int8 converter of a file's jobs, as it records it, else as FILE_CONVERTERS says."""
    return data.get("converter") or FILE_CONVERTERS.get(name)


def file_line(name: str, about: str) -> str:
    note = FILE_NOTES.get(name)
    return f"- `bench/results/{name}`: {about}" + (f". {note}" if note else "")


def bits_weight(bits: str) -> int | None:
    m = re.fullmatch(r"W(\d+)A(\d+)", bits)
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------------------------- tables


def compare_tables(state: dict) -> list[tuple[str, Table]]:
    """One table per model of a ``bench/compare.py`` state: sources x targets, quantized (minus float)."""
    cells = {k: v for k, v in state["cells"].items() if "error" not in v}
    keys = [k.split("|") for k in state["cells"]]
    models = ordered((k[0] for k in keys), MODEL_ORDER)
    sources = ordered((k[1] for k in keys), SOURCE_ORDER)
    targets = ordered((k[2] for k in keys), TARGET_ORDER)
    out = []
    for model in models:
        first = next((v for k, v in cells.items() if k.startswith(model + "|")), None)
        if first is None:
            continue
        model_targets = [t for t in targets if any(k.startswith(model + "|") and k.endswith("|" + t) for k in cells)]
        rows = []
        for source in sources:
            row = []
            for target in model_targets:
                cell = state["cells"].get(f"{model}|{source}|{target}")
                if cell is None:
                    row.append("-")
                elif "error" in cell:
                    row.append("error")
                else:
                    row.append(f"{cell['quantized']:.2f} ({signed(-cell['drop'])})")
            if any(c != "-" for c in row):
                rows.append([source, *row])
        title = f"**{model}**: {first['metric']}, float {first['float']:.2f}"
        out.append((title, (["calibration", *model_targets], rows)))
    return out


def rounding_table(files: dict[str, dict]) -> Table:
    """``bench/sim_rounding.py`` files (keys ``BITS/ROUNDING/SOURCE``): rows model x bits x rounding."""
    sources = ordered((k.split("/")[2] for data in files.values() for k in data), SOURCE_ORDER)
    rows = []
    for name, data in files.items():
        combos = list(dict.fromkeys(tuple(k.split("/")[:2]) for k in data))
        for bits, rounding in sorted(combos, key=lambda c: (c[0] != "W4A8", c[0], c[1] != "nearest")):
            w = bits_weight(bits)
            default = w is not None and (rounding == "gptq") == (w < 8)
            label = f"{rounding} (default)" if default else rounding
            rows.append([model_from_name(name), bits, label, *(num(data.get(f"{bits}/{rounding}/{s}"))
                                                                 for s in sources)])
    return ["model", "bits", "weight rounding", *sources], rows


def seeds_table(files: dict[str, dict]) -> Table:
    """``bench/seeds.py`` files (``top1`` keys ``BITS/SOURCE/SEED``, ``BITS/SOURCE/mean``, ``BITS/real``)."""
    keys = [k.split("/") for data in files.values() for k in data["top1"]]
    sources = ordered((k[1] for k in keys if len(k) == 3), SOURCE_ORDER)
    seeds = ordered((k[2] for k in keys if len(k) == 3 and k[2] != "mean"), ())
    header = ["model, bits"]
    for s in sources:
        header += [f"{s}, seeds {' / '.join(seeds)}", f"{s} mean"]
    has_real = any(len(k) == 2 and k[1] == "real" for k in keys)
    header += ["real"] if has_real else []
    rows = []
    for data in files.values():
        top = data["top1"]
        for bits in ordered((k.split("/")[0] for k in top), ("W8A4", "W4A8")):
            row = [f"{data.get('model', '?')} {bits}"]
            for s in sources:
                per_seed = " / ".join(num(top.get(f"{bits}/{s}/{seed}")) for seed in seeds)
                row += [per_seed, num(top.get(f"{bits}/{s}/mean"))]
            if has_real:
                row.append(num(top.get(f"{bits}/real")))
            rows.append(row)
    return header, rows


def seeds_time_table(files: dict[str, dict]) -> Table:
    rows = []
    for data in files.values():
        per_seed = data.get("generated", {}).get("wall_s_per_seed_0_1_2", {})
        for source, times in per_seed.items():
            rows.append([data.get("model", "?"), source, " / ".join(num(t, 1) for t in times)])
    return ["model", "source", "seconds per set, seeds 0 / 1 / 2"], rows


def variant_runs_table(files: dict[str, dict], with_seed: bool = False) -> Table:
    """``bench/ablation.py`` files: one row per variant, top-1 at each bit width and generation time."""
    bits = ordered((b for data in files.values() for v in data["variants"].values() for b in v if b != "generation_s"),
                   ("W8A4", "W4A8"))
    header = ["model", *(["seed"] if with_seed else []), "variant", *bits, "generation, s"]
    rows = []
    for name, data in files.items():
        seed = re.search(r"seed(\d+)", name)
        for variant, row in data["variants"].items():
            rows.append([data.get("model", "?"), *([seed.group(1) if seed else "?"] if with_seed else []),
                         VARIANT_LABELS.get(variant, variant), *(num(row.get(b)) for b in bits),
                         num(row.get("generation_s"), 1)])
    return header, rows


def picks_summary(state: dict) -> dict[str, dict[str, dict[str, Any]]]:
    """``bench/detect_picks.py`` state (jobs ``SPEC|SOURCE|SEED|PICK``) -> per spec and source: the
    values per seed, their mean, count, lowest and highest."""
    jobs = {tuple(k.split("|")): v for k, v in state["jobs"].items()}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for spec in ordered((k[0] for k in jobs), ()):
        mine = {k[1:]: v for k, v in jobs.items() if k[0] == spec}
        out[spec] = {}
        for source in ordered((k[0] for k in mine), SOURCE_ORDER):
            values = [v for k, v in mine.items() if k[0] == source]
            seeds = ordered((k[1] for k in mine if k[0] == source), ())
            out[spec][source] = {
                "per_seed": [[v for k, v in mine.items() if k[0] == source and k[1] == seed] for seed in seeds],
                "mean": statistics.fmean(values), "n": len(values), "lo": min(values), "hi": max(values)}
    return out


def picks_tables(state: dict) -> list[tuple[str, Table]]:
    """One table per target spec of a ``bench/detect_picks.py`` state."""
    out = []
    for spec, by_source in picks_summary(state).items():
        real = by_source.get("real", {}).get("mean")
        rows = []
        for source, r in by_source.items():
            picks = "; ".join(", ".join(f"{v:.2f}" for v in seed) for seed in r["per_seed"])
            rows.append([source, picks, f"{r['mean']:.2f} ({r['n']})", f"{r['lo']:.2f} to {r['hi']:.2f}",
                         "-" if real is None or source == "real" else signed(r["mean"] - real)])
        header = ["source", "picks (seeds split by ';')", "mean (jobs)", "lowest to highest", "mean minus real"]
        out.append((f"**{spec}**", (header, rows)))
    return out


def generation_table(files: dict[str, dict]) -> Table:
    """``bench/generation.py`` files: ours against MCT, one row per file."""
    rows = []
    for name, data in files.items():
        ours, mct = data.get("ours", {}), data.get("mct") or {}
        keep = mct.get("keep_freed_memory")
        rows.append([
            f"`{name}`", data.get("model", "?"), f"{data.get('n_images')} x {data.get('iters')}",
            data.get("device", "?"),
            num(ours.get("rate"), 1), num(mct.get("rate"), 1),
            f"{data['speedup']:.2f}x" if "speedup" in data else "-",
            f"{num(ours.get('wall_s'), 1)} / {num(mct.get('wall_s'), 1)}",
            f"{num(ours.get('peak_mb'), 0)} / {num(mct.get('peak_mb'), 0)}",
            "not recorded" if mct and keep is None else num(keep) if mct else "-",
            num(data.get("ceiling_rate"), 0),
        ])
    header = ["file", "model", "images x iterations", "device", "ours, image-iterations/s",
              "MCT, image-iterations/s", "ratio", "seconds, ours / MCT", "peak MiB, ours / MCT",
              "MCT under our allocator setting", "ceiling, images/s"]
    return header, rows


def generation_quality_table(data: dict) -> Table:
    top = data["top1"]
    bits = ordered((b for row in top.values() for b in row), ("W8A4", "W4A8"))
    return ["calibration", *bits], [[label, *(num(row.get(b)) for b in bits)] for label, row in top.items()]


def gpu_runs_table(data: dict) -> Table:
    rows = []
    for label, row in data.items():
        if not label.startswith("r20_"):
            continue
        if not isinstance(row, dict):
            rows.append([f"`{label}`", str(row), *["-"] * 6])
            continue
        rows.append([f"`{label}`", f"{row.get('n')} x {row.get('iters')}", num(row.get("cuda_graph")),
                     num(row.get("wall_s")), num(row.get("rate"), 0), num(row.get("peak_mb"), 1),
                     num(row.get("chunk")), f"{row['final_bn']:g}" if "final_bn" in row else "-"])
    return ["run", "images x iterations", "CUDA graph", "seconds", "image-iterations/s", "peak MiB", "chunk",
            "final BN loss"], rows


def flat_table(data: Any, prefix: str = "") -> Table:
    """Any JSON as key/value rows, for a file no section knows."""
    rows: list[list[str]] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, list) and not all(isinstance(v, (int, float, str)) for v in value):
            for i, v in enumerate(value):
                walk(v, f"{key}[{i}]")
        else:
            text = ", ".join(num(v) for v in value) if isinstance(value, list) else num(value)
            rows.append([f"`{key}`", text])

    walk(data, prefix)
    return ["key", "value"], rows


# ---------------------------------------------------------------------------------------------- sections


def section_compare(files: dict[str, dict]) -> list[str]:
    lines = ["Every cell is one full `dgh-deploy` job (generate, calibrate, convert, verify on the target's "
             "runtime) with the model's default generation budget: the quantized metric on the model's real "
             "validation data, and in brackets quantized minus float. `sim:WxAy` is the `sim` target at those "
             "bit widths (MSE activation ranges, bias correction, GPTQ weights below 8 bits). "
             "`python bench/compare.py` runs the missing cells of its state file and rewrites "
             "`bench/results/compare.md` from it.", ""]
    for name, state in files.items():
        lines += [f"From `bench/results/{name}`, measured on {machine_of(name, state)}.", ""]
        if name in FILE_NOTES:
            lines += [FILE_NOTES[name], ""]
        for title, table in compare_tables(state):
            lines += [title, "", *markdown(table), ""]
    return lines


def section_rounding(files: dict[str, dict]) -> list[str]:
    lines = ["Top-1 of the `sim` target with weights rounded by GPTQ or to nearest, per calibration source "
             "(`python bench/sim_rounding.py`): the job's cached seed-0 DGH and bns sets, noise (seed 0) and real "
             "images; per-channel weights, MSE activation ranges, bias correction on. \"(default)\" marks the "
             "rounding the `sim` target uses at those bits.", "", *markdown(rounding_table(files)), ""]
    lines += [file_line(n, f"{model_from_name(n)} (named from the file name), measured on {machine_of(n, d)}")
              for n, d in files.items()]
    return [*lines, ""]


def per_file_section(intro: str, files: dict[str, dict], render: Callable[[str, dict], list[str]]) -> list[str]:
    """A section that introduces itself once, then renders each results file (and its ``note``)."""
    lines = [intro, ""]
    for name, data in files.items():
        lines += render(name, data)
        if data.get("note"):
            lines += [data["note"], ""]
    return lines


def schedule_times_table(data: dict) -> Table:
    """Generation seconds of each set of a ``bench/seeds.py --scales`` file, by schedule and seed."""
    by_label: dict[str, dict[str, dict]] = {}
    for key, made in data.get("generated", {}).items():
        name, seed = key.rsplit("/", 1)
        by_label.setdefault(name, {})[seed] = made
    seeds = sorted({seed for v in by_label.values() for seed in v})
    rows = [[f"`{name}`", *(f"{num(v[s]['wall_s'], 1)} (load {num(v[s].get('load'), 2)})" if s in v else "-"
                            for s in seeds)] for name, v in by_label.items()]
    return ["set", *(f"seed {s}, s" for s in seeds)], rows


def section_schedules(files: dict[str, dict]) -> list[str]:
    """``bench/seeds.py --scales`` files: the same seeds at full size and coarse to fine."""
    def render(name: str, data: dict) -> list[str]:
        return [f"From `bench/results/{name}`, measured on {machine_of(name, data)}: {data.get('model')}, "
                f"{data.get('n_images')} images x {data.get('iters')} iterations.", "",
                *markdown(seeds_table({name: data})), "", "Generation of each set:", "",
                *markdown(schedule_times_table(data)), ""]

    return per_file_section(
        "Coarse-to-fine generation at a small input size (`python -m bench.seeds --scales`): per seed, one set at "
        "the full size only and one per resolution schedule (`dgh@SIDE:SHARE,...`: a stage at that fraction of the "
        "side for that share of the iterations), each scored by the `sim` target beside real calibration images.",
        files, render)


def section_seeds(files: dict[str, dict]) -> list[str]:
    sets = {n: d for n, d in files.items() if "top1" in d and "scales" not in d}
    runs = {n: d for n, d in files.items() if "variants" in d}
    lines: list[str] = []
    if sets:
        lines += ["One DGH and one bns set per seed (`python bench/seeds.py`), each scored by the `sim` target "
                  "(GPTQ weights at W4A8, nearest at W8A4) beside real calibration images.", "",
                  *markdown(seeds_table(sets)), "", "Generation time of each set:", "",
                  *markdown(seeds_time_table(sets)), ""]
        for n, d in sets.items():
            where = d.get("generated", {}).get("where", machine_from_name(n))
            lines.append(file_line(n, f"sets generated on {where}; scored by the {d.get('scored', 'not recorded')}"))
        lines.append("")
    if runs:
        lines += ["More seeds in `bench/ablation.py`'s format (one DGH and one noise set per seed):", "",
                  *markdown(variant_runs_table(runs, with_seed=True)), ""]
        lines += [file_line(n, f"measured on {machine_of(n, d)}, float top-1 {num(d.get('float_top1'))}")
                  for n, d in runs.items()]
        lines.append("")
    return lines


def section_picks(files: dict[str, dict]) -> list[str]:
    lines = ["A detector's calibration sources over seeds and picks (`python bench/detect_picks.py`): one set per "
             "source and seed (dgh and bns as `dgh-deploy generate` makes them, noise, and windows of the real "
             "image folder), and a full job on each pick of a set (the set rotated: other images to calibrate "
             "on, others held out). A `tensorrt-int8:METHOD` column is that target with `--act-range METHOD`; "
             "percentile is its detector default. The cells are mAP50-95 on the data's validation split.", ""]
    for name, state in files.items():
        lines += [f"From `bench/results/{name}`, measured on {machine_of(name, state)}: {state.get('model', '?')} at "
                  f"{state.get('imgsz', '?')}, float {num(state.get('float'))}.", ""]
        for title, table in picks_tables(state):
            lines += [title, "", *markdown(table), ""]
    return lines


def section_generation(files: dict[str, dict]) -> list[str]:
    versions = sorted({d["mct"]["version"] for d in files.values() if d.get("mct", {}).get("version")})
    lines = [f"Our generator and Sony MCT {', '.join(versions) or ''}'s `pytorch_data_generation_experimental` "
             "(its defaults) on the same model, image count, iterations, device and threads, one after the other in "
             "one process (`python bench/generation.py`). The device column is the file's `device`. Peak memory is "
             "RSS on a CPU and GPU memory on a GPU; the ceiling is the model's bare forward and backward to the "
             "input, in images per second at our chunk size. On CPU our generator keeps freed memory in the heap; "
             "MCT runs as shipped unless the allocator column says yes (`--mct-keep-freed-memory`).", "",
             *markdown(generation_table(files)), ""]
    notes = [f"- `bench/results/{n}`: {FILE_NOTES[n]}" for n in files if n in FILE_NOTES]
    lines += [*notes, ""] if notes else []
    for name, data in files.items():
        if "top1" in data:
            lines += [f"Top-1 of the `sim` target on each image set of `bench/results/{name}` ({data.get('model')}, "
                      f"{data.get('n_images')} x {data.get('iters')}, float {num(data.get('float_top1'))}; "
                      f"{data.get('device')}):", "", *markdown(generation_quality_table(data)), ""]
    return lines


def section_ablation(files: dict[str, dict]) -> list[str]:
    lines = ["Each DGH component off in turn (`python bench/ablation.py`), judged by the `sim` target's top-1, with "
             "the references beside.", ""]
    for name, data in files.items():
        lines += [file_line(name, f"{data.get('model')}, {data.get('n_images')} images x {data.get('iters')} "
                                  f"iterations, float top-1 {num(data.get('float_top1'))}, measured on "
                                  f"{machine_of(name, data)}"), "", *markdown(variant_runs_table({name: data})), ""]
    return lines


def section_gpu(files: dict[str, dict]) -> list[str]:
    lines = ["The generator on a GPU (`python -m bench.gpu_check`): cifar_resnet20 runs with and without the CUDA "
             "graph, and the exactness of chunked statistics.", ""]
    for name, data in files.items():
        rel = data.get("exactness_rel_err")
        exact = ", ".join(f"{v:.1e}" for v in rel) if isinstance(rel, list) else num(rel)
        lines += [file_line(name, f"measured on {machine_of(name, data)}, torch {data.get('torch', '?')}"), "",
                  "DGH's gradient (float64) with the set in chunks, and on the CPU, against one batch on the GPU, "
                  f"relative error: {exact}.", "",
                  *markdown(gpu_runs_table(data)), ""]
    return lines


def precision_pairs(data: dict) -> list[tuple[str, str]]:
    """(fp32 label, bf16 label) of each generated source in a ``bench/seeds.py --precisions`` file."""
    labels = ordered((k.split("/")[1] for k in data["top1"] if k.count("/") == 2), SOURCE_ORDER)
    return [(label, f"{label}-bf16") for label in labels if f"{label}-bf16" in labels]


def precision_quality_table(data: dict) -> Table:
    """Top-1 per seed, mean and sample standard deviation of fp32 and bf16 sets side by side."""
    top, spread = data["top1"], data.get("spread", {})
    seeds = ordered((k.split("/")[2] for k in top if k.count("/") == 2 and not k.endswith("/mean")), ())
    pairs = precision_pairs(data)
    header = ["bits"]
    for source, _ in pairs:
        header += [f"{source} fp32, seeds {' / '.join(seeds)}", "fp32 mean (sd)", f"{source} bf16, seeds",
                   "bf16 mean (sd)", "bf16 minus fp32"]
    header.append("real")
    rows = []
    for bits in ordered((k.split("/")[0] for k in top), ("W8A4", "W4A8")):
        row = [bits]
        for pair in pairs:
            for label in pair:
                row += [" / ".join(num(top.get(f"{bits}/{label}/{seed}")) for seed in seeds),
                        f"{num(top.get(f'{bits}/{label}/mean'))} ({num(spread.get(f'{bits}/{label}', {}).get('std'))})"]
            row.append(signed(top[f"{bits}/{pair[1]}/mean"] - top[f"{bits}/{pair[0]}/mean"]))
        row.append(num(top.get(f"{bits}/real")))
        rows.append(row)
    return header, rows


def precision_time_table(data: dict) -> Table:
    """Each generated set: seconds, image-iterations per second and the load average when it started."""
    rows = [[key.split("/")[0], key.split("/")[1], num(run.get("wall_s"), 1), num(run.get("rate"), 0),
             num(run.get("load"))] for key, run in data.get("generated", {}).items()]
    return ["set", "seed", "seconds", "image-iterations/s", "load average at start"], rows


def precision_speed_table(data: dict) -> Table:
    """A ``bench/generation.py`` file with bf16 rows: ours fp32, ours bf16 and MCT, with the ratios."""
    fp32, mct = data.get("ours", {}), data.get("mct") or {}
    rows = []
    named = (("ours, fp32", fp32, data.get("ceiling_rate")), ("ours, bf16", data.get("ours_bf16"),
                                                              data.get("ceiling_rate_bf16")),
             (f"MCT {mct.get('version', '')}", mct, None))
    for label, run, ceiling in named:
        if not run:
            continue
        each = run.get("runs", [run])
        rates = " / ".join(f"{r['rate']:,.0f} (load {num(r.get('load_after'))})" for r in each)
        over_fp32 = f"{run['rate'] / fp32['rate']:.2f}x" if fp32 else "-"
        over_mct = f"{run['rate'] / mct['rate']:.2f}x" if mct else "-"
        rows.append([label, num(run.get("rate"), 0), rates, num(run.get("peak_mb"), 0), over_fp32, over_mct,
                     num(ceiling, 0)])
    return ["generator", "image-iterations/s (median)", "each run, in order (load average at its start)",
            "peak MiB", "over ours fp32", "over MCT", "ceiling, images/s"], rows


def section_precision(files: dict[str, dict]) -> list[str]:
    lines = ["bfloat16 autocast for generation (`--precision bf16`, `generation/precision.py`) against float32, on "
             "the same machine: the model's convolutions in bf16, the images, the optimiser, the BN statistics "
             "(float64 sums) and the losses in float32/float64.", ""]
    for name, data in files.items():
        where = f"measured on {data.get('machine') or machine_of(name, data)}, {data.get('device', '?')}"
        budget = f"{data.get('model')}, {data.get('n_images')} images x {data.get('iters')} iterations"
        if "top1" in data:
            lines += [file_line(name, f"{budget}, {where}: three seeds per precision (`python -m bench.seeds "
                                      "--precisions fp32,bf16`), each set scored by the `sim` target (GPTQ weights "
                                      "at W4A8, nearest at W8A4), top-1 on the CIFAR-10 test images; sd is the "
                                      "seeds' sample standard deviation."), "",
                      *markdown(precision_quality_table(data)), "", "Generation of each set, interleaved by seed "
                      "(the machine is shared: the load average is beside each time):", "",
                      *markdown(precision_time_table(data)), ""]
        elif "ours" in data:
            lines += [file_line(name, f"{budget}, {where}, torch {data.get('torch', '?')}: `python -m "
                                      "bench.generation` with fp32 and bf16 runs interleaved in one process, then "
                                      "MCT."), "", *markdown(precision_speed_table(data)), ""]
    return lines


def section_other(files: dict[str, dict]) -> list[str]:
    lines = ["Files no section above reads, shown as they are."]
    for name, data in files.items():
        machine = machine_of(name, data) if isinstance(data, dict) else machine_from_name(name)
        lines += ["", f"`bench/results/{name}`, measured on {machine}:", "", *markdown(flat_table(data))]
    return [*lines, ""]


def npu_config(row: dict) -> str:
    return f"{row['accelerator']} ({row['system_config']}, {row['memory_mode']})"


def edge_vela_table(model: dict) -> Table:
    """``bench/edge.py``: one row per Ethos-U configuration Vela compiled the model's int8 file for."""
    rows = []
    for e in model["ethos_u"]:
        capacity = e.get("sram_capacity_kib")
        fits = "-" if capacity is None else f"{'yes' if e['fits_sram'] else 'no'} ({capacity:,.0f} KiB)"
        rows.append([npu_config(e), f"{e['npu_ops']} of {e['npu_ops'] + e['cpu_ops']}", num(e["sram_kib"], 1),
                     num(e["flash_kib"], 1), num(e["dram_kib"], 1), fits, num(e["inference_ms"], 2),
                     num(e["macs"] / 1e6, 1)])
    return ["Ethos-U configuration", "NPU ops", "SRAM, KiB", "flash, KiB", "DRAM, KiB", "fits the SRAM",
            "ms per inference (Vela's estimate)", "MMACs"], rows


def edge_runtime_table(model: dict) -> Table:
    metric = model["metric"]
    rows = [["float (PyTorch)", num(model["float"])], ["LiteRT (XNNPACK kernels)", num(model["litert"])],
            ["TFLite Micro (reference kernels)", num(model["tflite_micro"])]]
    return ["runtime", f"{metric} on {model['images']:,} images"], rows


def edge_agreement(model: dict) -> str:
    """TFLite Micro against LiteRT image by image, as one sentence."""
    shown = {k: v for k, v in model["agreement"].items() if k != "images"}
    text = ", ".join(f"{k} {num(v)}" for k, v in shown.items())
    arena = model.get("arena_bytes")
    return (f"TFLite Micro against LiteRT on the same {int(model['agreement'].get('images', 0)):,} images: {text}. "
            + (f"TFLite Micro's tensor arena: {arena / 1024:,.1f} KiB." if arena else ""))


def edge_fallback(model: dict) -> list[str]:
    """The ops Vela left to the CPU in any configuration, with its reason."""
    seen = {(op["op"], op["name"], op["reason"]) for e in model["ethos_u"] for op in e["cpu_fallback"]}
    return [f"- `{op}` (`{name}`): {reason}" for op, name, reason in sorted(seen)]


def section_edge(files: dict[str, dict]) -> list[str]:
    lines = ["Per model, one `dgh-deploy --target ethos-u` job with its default DGH budget "
             "(`python -m bench.edge`): the int8 .tflite compiled by Arm's Vela for each Ethos-U configuration "
             "(placement, memory and time are Vela's estimates: no Ethos-U silicon ran), and the same int8 file "
             "scored on LiteRT and on TFLite Micro, the runtime a microcontroller runs, on the same images. Flash "
             "is the weights read from flash; in the SRAM-only mode (an Ethos-U55 with 512 KiB of SRAM and "
             "nothing else) the weights count as SRAM.", ""]
    for name, data in files.items():
        v = data.get("versions", {})
        lines += [f"From `bench/results/{name}`, measured on {machine_of(name, data)}; Vela "
                  f"{v.get('ethos-u-vela', '?')}, tflite-micro {v.get('tflite-micro', '?')}.", ""]
        for key in ordered(data["models"], ("demo", *MODEL_ORDER)):
            m = data["models"][key]
            cal = m["calibration"]
            size = "x".join(map(str, m["imgsz"]))
            lines += [f"**{key}** at {size} (calibration: {cal['source']}, {cal['images']} images"
                      + (f" x {cal['iters']} iterations" if cal.get("iters") else "") + "):", "",
                      *markdown(edge_vela_table(m)), ""]
            fallback = edge_fallback(m)
            lines += (["Ops Vela leaves to the CPU:", "", *fallback, ""] if fallback
                      else ["Every op on the NPU in every configuration.", ""])
            lines += edge_placement_note(m) if m.get("placement_only") else [
                *markdown(edge_runtime_table(m)), "", edge_agreement(m), ""]
    return lines


def edge_placement_note(model: dict) -> list[str]:
    """A model compiled for placement only (no trained weights here): why there is no metric."""
    said = model.get("tflite_micro_error")
    return ["No trained weights here: placement, memory and time only (they depend on the graph, not the "
            "weights); no metric." + (f" TFLite Micro on these untrained weights: {said}" if said else ""), ""]


def readme_edge(results: dict[str, Any]) -> list[str]:
    """One short table of the edge figures for the README: the first two configurations, both runtimes."""
    name = next((n for n in sorted(results) if n.startswith("edge_")), None)
    if name is None:
        return []
    data = results[name]
    first_model = data["models"][next(iter(data["models"]))]
    configs = [e["accelerator"] for e in first_model["ethos_u"][:2]]
    first = npu_config(first_model["ethos_u"][0])
    rows = []
    for key in ordered(data["models"], ("demo", *MODEL_ORDER)):
        m = data["models"][key]
        shown = m["ethos_u"][:2]
        e = shown[0]
        own = m.get("converter")  # a model run later than the file's first run, with another converter
        via = f"; {own}" if own and own != converter_of(name, data) else ""
        label = f"{key} (untrained: placement only)" if m.get("placement_only") else f"{key} ({m['metric']}{via})"
        rows.append([label, f"{e['npu_ops']} of {e['npu_ops'] + e['cpu_ops']}", num(e["sram_kib"], 1),
                     num(e["flash_kib"], 1), *(num(c["inference_ms"], 2) for c in shown), num(m.get("litert")),
                     num(m.get("tflite_micro")), num((m.get("arena_bytes") or 0) / 1024 or None, 1)])
    conv = converter_of(name, data)
    by = f" (converted by {conv})" if conv else ""
    return ["", f"Edge: Vela's placement and estimates (NPU ops, SRAM and flash on {first}), and the int8 "
                f"metric on LiteRT and TFLite Micro{by}, measured on {data.get('machine', 'a machine not recorded')} "
                f"(`bench/results/{name}`; more configurations in docs/results.md):", "",
            *markdown((["model", "NPU ops", "SRAM, KiB", "flash, KiB", *(f"ms, {c}" for c in configs), "LiteRT",
                        "TFLite Micro", "arena, KiB"], rows))]


def section_reliability(files: dict[str, dict]) -> list[str]:
    lines = ["Real `dgh-deploy` processes on the bundled demo (`python -m bench.reliability`): two jobs started "
             "together on one cache key, then jobs interrupted by SIGINT or SIGTERM at uniformly random moments "
             "of their run, each followed by a check that `--out` holds a complete result (the previous one), no "
             "staging folder or partial file is left, every cache entry passes its checksum, and the exit code is "
             "130 or 143. The stage is read off the uninterrupted run's per-stage times (a loaded machine runs "
             "slower, so late kills may land in a later stage than named).", ""]
    for name, data in files.items():
        conc, kills, resume = data["concurrent"], data["kills"], data["resume"]
        by_stage: dict[str, int] = {}
        for k in kills:
            by_stage[k["stage"]] = by_stage.get(k["stage"], 0) + 1
        rows = [[stage, str(n)] for stage, n in by_stage.items()]
        lines += [f"From `bench/results/{name}`, measured on {machine_of(name, data)}; job `{data['job']}`.", "",
                  f"- concurrent jobs: exit codes {conc['exit_codes']}, {conc['generated']} generated, "
                  f"{conc['cache_entries']} cache entry, problems: {len(conc['cache_problems'])}",
                  f"- {len(kills)} kills ({sum(k['signal'] == 'SIGINT' for k in kills)} SIGINT, "
                  f"{sum(k['signal'] == 'SIGTERM' for k in kills)} SIGTERM): "
                  f"{data['corrupt_after_kills']} left anything corrupt; exit codes "
                  f"{sorted({k['exit_code'] for k in kills})}",
                  f"- SIGTERM in generation, then `--resume`: checkpoint written {resume['checkpoint_written']}, "
                  f"resumed exit code {resume['resumed_exit_code']}, problems: {len(resume['problems'])}", "",
                  *markdown((["stage at the kill", "kills"], rows)), ""]
    return lines

def job_stage_table(data: dict) -> Table:
    """``bench/job_stages.py``: each stage's fastest seconds per version, and before over after."""
    best = {label: min(runs, key=lambda r: r["wall_s"]) for label, runs in data["runs"].items()}
    stages = list(dict.fromkeys(k for r in best.values() for k in r["times_s"]))
    rows = []
    def seconds(r: dict, stage: str) -> float | None:
        if stage == "wall less generation":  # the rest of the job, which the generation budget does not set
            return r["wall_s"] - r["times_s"].get("generation", 0.0)
        return r["wall_s"] if stage == "wall" else r["times_s"].get(stage)

    for stage in [*stages, "wall less generation", "wall"]:
        before, after = (seconds(r, stage) for r in (best["before"], best["after"]))
        ratio = f"{before / after:.2f}x" if before and after else "-"
        rows.append([f"**{stage}**" if stage.startswith("wall") else stage, num(before, 1), num(after, 1), ratio])
    conv = {label: f", {r['converter']}" if r.get("converter") else "" for label, r in best.items()}
    return ["stage", f"before ({data['before']}{conv['before']}), s", f"after ({data['after']}{conv['after']}), s",
            "before / after"], rows


def section_job_stages(files: dict[str, dict]) -> list[str]:
    lines = ["The detector job CI runs, `dgh-deploy --target tflite-int8 --model yolov5n --imgsz 320 --val-data "
             "coco128.yaml`, from a cold cache, stage by stage (`python -m bench.job_stages`): two versions of the "
             "project in one run, alternating, each in its own process; the fastest run of each. `verification` "
             "holds the float, LiteRT and TFLite Micro evaluations and the data-free checks.", ""]
    for name, data in files.items():
        iters = f"{data['iters']} generation iterations (the stages after generation)" if data.get("iters") else \
            "the job's own generation budget"
        loads = ", ".join(f"{label} {num(r.get('load_after'))}" for label, runs in data["runs"].items() for r in runs)
        lines += [f"From `bench/results/{name}`, measured on {machine_of(name, data)}, {data['threads']} threads, "
                  f"{iters}; {sum(map(len, data['runs'].values()))} runs (load average after each: {loads}).", "",
                  *markdown(job_stage_table(data)), ""]
    return lines


def held_out_sqnr(row: dict) -> str:
    """int8 against float on the held-out DGH images: the output's SQNR, or each detector part's."""
    free = row.get("data_free") or {}
    parts = [(k.removesuffix("_sqnr_db"), v) for k, v in free.items() if k.endswith("_sqnr_db")]
    if len(parts) == 1:
        return num(parts[0][1], 1)
    return ", ".join(f"{name} {num(v, 1)}" for name, v in parts) or "-"


def converters_table(data: dict) -> Table:
    rows = []
    conv = data["converters"]
    models = ordered({m for c in conv.values() for m in c["models"]}, ("demo", *MODEL_ORDER))
    for model in models:
        for name in ordered(conv, ("onnx2tf", "litert-torch")):
            m = conv[name]["models"].get(model)
            if m is None:
                continue
            parity = m["float_parity"]
            ops = m["int8_ops"]
            b = m.get("budget") or data.get("budget", {})
            label = (f"{model} (untrained: random weights)" if m.get("untrained")
                     else f"{model} ({m['metric']}, float {num(m['float'])})")
            rows.append([label, name, f"{b.get('n_images', '?')} x {b.get('iters', '?')}", num(m["int8"]),
                         held_out_sqnr(m), f"{max(parity['max_abs_error']):.2g}", num(parity.get("top1_agreement"), 1),
                         f"{sum(ops.values())} ({len(ops)} kinds)", num(m["preflight_s"], 1),
                         num(m["int8_conversion_s"], 1), num(m["int8_bytes"] / 1024, 1)])
    return (["model", "converter", "DGH set: images x iterations", "int8", "int8 vs float SQNR, dB (held-out DGH)",
             "float parity: max abs diff", "top-1 agreement, %", "int8 ops", "float conversion + check, s",
             "int8 conversion, s", "int8 file, KiB"], rows)


def section_converters(files: dict[str, dict]) -> list[str]:
    lines = ["The two `tflite-int8` converters on the same DGH set per model (`python -m bench.converters --venvs "
             ".venv,.venv-onnx2tf`: each stack in its own venv). Float parity is the float .tflite against PyTorch "
             "on the calibration images; int8 is LiteRT on the real validation images (an untrained model has no "
             "score to keep: its row shows conversion and int8 against float only); the SQNR column is int8 "
             "against float on the DGH images the job held out; the float conversion and its check run before "
             "generation (litert-torch quantizes that float file, onnx2tf the saved model its float conversion "
             "wrote).", ""]
    for name, data in files.items():
        lines += [f"From `bench/results/{name}`, measured on {machine_of(name, data)}; "
                  f"{data.get('val_limit', '?')} test images for classifiers, coco128 val2017 for detectors.", "",
                  *markdown(converters_table(data)), ""]
        sizes = [f"{c}: {num(d['installed']['bytes'] / 2**20, 0)} MiB in {len(d['installed']['distributions'])} "
                 "distributions" for c, d in data["converters"].items() if d.get("installed")]
        if sizes:
            lines += ["Installed on top of the core packages: " + "; ".join(sizes) + ".", ""]
    return lines


def ranges_summary(data: dict) -> dict[str, dict[str, list[float]]]:
    """``bench/tflite_ranges.py``: method -> source -> the finished builds' values."""
    out: dict[str, dict[str, list[float]]] = {}
    for key, value in data["builds"].items():
        method, source, _seed, _pick = key.split("|")
        out.setdefault(method, {}).setdefault(source, []).append(value)
    return out


def ranges_agreement(data: dict, method: str, source: str) -> str:
    """Mean scores and boxes SQNR (dB) of int8 against float over the builds that recorded them."""
    got = [a for key, a in data.get("agreement", {}).items() if key.split("|")[:2] == [method, source]]
    if not got:
        return "-"
    return (f"{statistics.fmean(a['scores_sqnr_db'] for a in got):.2f} / "
            f"{statistics.fmean(a['boxes_sqnr_db'] for a in got):.2f} ({len(got)})")


def ranges_table(data: dict) -> Table:
    flt = data.get("float")
    rows = []
    for method, sources in ranges_summary(data).items():
        real = statistics.fmean(sources["real"]) if sources.get("real") else None
        for source, values in sources.items():
            mean = statistics.fmean(values)
            within = sum(v >= flt - 1.0 for v in values) if flt is not None else None
            rows.append([f"`{method}`", source, f"{mean:.2f} ({len(values)})", f"{min(values):.2f}",
                         f"{max(values):.2f}", f"{max(values) - min(values):.2f}",
                         "-" if within is None else f"{within}/{len(values)}",
                         "-" if real is None else f"{mean - real:+.2f}"])
            if data.get("agreement"):
                rows[-1].append(ranges_agreement(data, method, source))
    header = ["range method / weight rounding", "calibration", "mean (builds)", "min", "max", "spread",
              "within 1.0 of float", "mean minus real"]
    return ([*header, "scores / boxes SQNR against float, dB (builds)"] if data.get("agreement") else header), rows


def section_ranges(files: dict[str, dict]) -> list[str]:
    lines = ["`tflite-int8`'s activation-range methods on a detector over seeds and picks (`python -m "
             "bench.tflite_ranges`): one 72-image set per (source, seed), picks of 64 (the set rotated "
             "by 8 images; three at 320, one at 640), each built as a job builds it and scored on LiteRT on the "
             "validation images; one float conversion for all. A method ending in `/gptq` has its conv weights "
             "GPTQ-rounded on the same set onto the converter's grid (`--weight-rounding gptq`); the others are "
             "rounded to the nearest by the converter. Files before the maps layout (tflite-int8's default since "
             "2026-12-07) built the split one. The defaults for detectors are chosen by these spreads, not "
             "by one run.", ""]
    for name, data in files.items():
        lines += [f"From `bench/results/{name}`, measured on {machine_of(name, data)}; {data['model']} at "
                  f"{data['imgsz']}, converter {data.get('converter') or 'the installed one'}, "
                  f"{data.get('layout', 'split')} layout (`--layout`), mAP50-95 "
                  f"(float {num(data.get('float'))}).{' ' + data['note'] if data.get('note') else ''}", "",
                  *markdown(ranges_table(data)), ""]
    return lines


def classify_picks_table(state: dict) -> Table:
    """``bench/classify_picks.py``: per (method, source), each build's top-1 agreement (picks of a seed
    by ',', seeds by ';'), their mean and range, the mean logits SQNR and the mean minus real's."""
    builds, rows = state["builds"], []
    keys = [k.split("|") for k in builds]
    for method in dict.fromkeys(k[0] for k in keys):
        by_source: dict[str, dict[str, list[dict]]] = {}
        for m, src, seed, pick in keys:
            if m == method:
                by_source.setdefault(src, {}).setdefault(seed, []).append(builds[f"{m}|{src}|{seed}|{pick}"])
        real = [b["top1_agreement"] for seed in by_source.get("real", {}).values() for b in seed]
        for src, seeds in by_source.items():
            done = [b for seed in seeds.values() for b in seed]
            top1 = [b["top1_agreement"] for b in done]
            mean = statistics.fmean(top1)
            rows.append([method, src, "; ".join(", ".join(f"{b['top1_agreement']:.2f}" for b in seed)
                                                for seed in seeds.values()),
                         f"{mean:.2f} ({len(top1)})", f"{min(top1):.2f} .. {max(top1):.2f}",
                         num(statistics.fmean(b["output_sqnr_db"] for b in done)),
                         f"{mean - statistics.fmean(real):+.2f}" if real else "-"])
    return ["method", "source", "top-1 agreement, %", "mean (builds)", "min .. max", "logits SQNR, dB",
            "mean minus real"], rows


def section_classify_picks(files: dict[str, dict]) -> list[str]:
    def render(name: str, data: dict) -> list[str]:
        return [f"From `bench/results/{name}`, measured on {machine_of(name, data)}; {data.get('model')} at "
                f"{data.get('imgsz')}, converter {data.get('converter')}, agreement on {data.get('natural')}.", "",
                *markdown(classify_picks_table(data)), ""]

    return per_file_section(
        "A 224-pixel classifier's calibration over seeds and picks (`python -m bench.classify_picks`): "
        "EfficientNet-Lite0 (ImageNet weights) has no labelled ImageNet images here, so each tflite-int8 "
        "build is scored by top-1 agreement of its int8 file (LiteRT) with the float model on natural images "
        "(coco128's 128 val images, where one image is 0.78 points, or 1,000 CIFAR-10 test images upscaled: "
        "each file says which) and by the logits' SQNR. One set per (source, seed): the "
        "default job's DGH set (128 + 16 images), and coco128's 128 train images (`real`, the same for every "
        "seed); pick k rotates the set by k hold-outs. A method is the build's `--act-range`; `/gptq` adds "
        "`--weight-rounding gptq` (the others round to nearest, the classifiers' default); `^H` sets "
        "`--output-headroom H` (`^1`: the logits' range as the set gives it; without, the task's).", files, render)


def section_artifacts(files: dict[str, dict]) -> list[str]:
    lines = ["Do the visible artifacts of DGH detector images (a saturated frame, horizontal stripes of a 4-pixel "
             "period) set the activation ranges min/max calibration takes? (`python -m bench.artifacts`, on "
             "`bench/tflite_ranges.py`'s sets; every leaf module's output of the float PyTorch model, per tensor "
             "over the whole set.) A range ratio is the tensor's range after the change over its range as "
             "generated: median over tensors, with the 10th and 90th percentiles.", ""]
    for name, data in files.items():
        rows = []
        for seed, r in data["seeds"].items():
            def ratio(key: str, r: dict = r) -> str:
                v = r[key]
                return f"{v['median']:.3f} ({v['p10']:.3f} .. {v['p90']:.3f})"

            rows.append([seed, f"{r['max_in_band']:.2f} / {r['min_in_band']:.2f} (area {r['band_area_share']:.2f})",
                         ratio("border_reflected"), ratio("stripes_removed"), ratio("columns_low_passed"),
                         ratio("against_real")])
        lines += [f"From `bench/results/{name}`, measured on {machine_of(name, data)}; {data['model']} at "
                  f"{data['imgsz']}, border band {data['band']:.0%} of the side.", "",
                  *markdown((["seed", "max / min in the border band", "border reflected", "stripes removed",
                              "control: columns low-passed", "DGH over real"], rows)), ""]
    return lines


def input_size_quality(run: dict) -> str:
    if "metric" in run:
        return f"{run['metric']} {num(run['quantized'])} (float {num(run['float'])})"
    agreement = run.get("agreement") or {}
    return f"top-1 agreement {num(agreement.get('top1_agreement'))}% on {agreement.get('images', '-')} natural images"


def input_size_table(case: dict) -> Table:
    """``bench/input_sizes.py``: one row per (calibration, seed) job of a case."""
    rows = []
    for key, run in case["runs"].items():
        budget = run.get("budget") or {}
        stages = " / ".join(f"{s[3] - s[2]} at {s[0]}" for s in run.get("stages") or []) or "full size"
        gen, est = run.get("generation_s"), run.get("estimated_s")
        ratio = f" ({est / gen:.2f}x)" if gen and est else ""
        precision = f" ({run['precision']})" if run.get("precision") not in (None, "fp32") else ""
        rows.append([key, f"{budget.get('n_images', run['images'])} x {budget.get('iters', '-')}" if budget else
                     f"{run['images']} real", stages if budget else "-", f"{num(gen, 0)}{precision}",
                     f"{num(est, 0)}{ratio}", num(run["wall_s"], 0), num(run.get("load_after"), 2),
                     input_size_quality(run)])
    return ["run", "images x iterations", "iterations at each side", "generation, s", "estimate printed, s",
            "job, s", "load after", "int8"], rows


def section_input_sizes(files: dict[str, dict]) -> list[str]:
    lines = ["The default `tflite-int8` job at real input sizes, each run in its own process from a cold cache "
             "(`python -m bench.input_sizes`): the budget the job chose by input size, generation's time against "
             "the estimate it printed before starting, the whole job's wall time, and the int8 result. The "
             "classifier (EfficientNet-Lite0, ImageNet weights) is scored by top-1 agreement of the int8 file "
             "with the float model on coco128's val images, there being no labelled ImageNet images here; "
             "`real` calibrates it on coco128's train images. *Full size only* is generation as every job ran "
             "it before coarse-to-fine, timed over a few steps in the same process and projected to the same "
             "budget, not run whole.", ""]
    for name, data in files.items():
        lines += [f"From `bench/results/{name}`, measured on {machine_of(name, data)}.", ""]
        for case_name, case in data["cases"].items():
            lines += [f"**{case_name}**", "", *markdown(input_size_table(case)), ""]
            if case.get("note"):
                lines += [case["note"], ""]
            full = case.get("full_size")
            # Times taken under another job's load compare with nothing: the projection is set beside the
            # least loaded default run.
            dgh = [r for k, r in case["runs"].items() if k.startswith("dgh:") and r.get("generation_s")]
            if full and dgh:
                calm = min(dgh, key=lambda r: r.get("load_after") or 0.0)
                lines += [f"Full size only: {num(full['step_s'], 2)} s a step ({full['steps_timed']} steps timed, "
                          f"chunk {full['chunk']}, {'retained' if full['retained_graphs'] else 'two-pass'}), "
                          f"{num(full['projected_generation_s'], 0)} s projected for the same budget: "
                          f"{full['projected_generation_s'] / calm['generation_s']:.1f}x the least loaded default "
                          f"run's {num(calm['generation_s'], 0)} s (load average {num(calm.get('load_after'), 2)} "
                          "after it). Runs with a load average over 2 shared this 2-core machine with other jobs: "
                          "their times and estimates are not the tool's.", ""]
    return lines


def whole_process_rows(data: dict) -> Table:
    rows = []
    for i, r in enumerate(data["rounds"]):
        rows.append([str(i), f"`{data['baseline']}`", num(r["baseline"]["wall_s"], 1), "1.00x",
                     num(r["baseline"].get("load_after"), 2)])
        for run in ["this", *data.get("variants", [])]:
            rows.append([str(i), "this tree" + (f" `{run}`" if run != "this" else ""), num(r[run]["wall_s"], 1),
                         f"{r[run]['ratio']:.2f}x", num(r[run].get("load_after"), 2)])
    return ["round", "process", "wall, s", "baseline over it", "load after"], rows


def section_whole_process(files: dict[str, dict]) -> list[str]:
    """``bench/whole_process.py``: fresh ``generate`` processes of this tree and of a baseline commit, in turns."""
    def render(name: str, data: dict) -> list[str]:
        return [f"From `bench/results/{name}`, measured on {machine_of(name, data)}: {data['model']}, "
                f"{data['n_images']} images x {data['iters']} iterations, {data['threads']} threads, baseline "
                f"`{data['baseline']}`; median {data['median_ratio']:.2f}x.", "", *markdown(whole_process_rows(data)),
                ""]

    return per_file_section(
        "Generation as a user's process runs it (`python -m bench.whole_process`): one fresh `dgh-deploy generate` "
        "process of the baseline commit and one of the tree that wrote the file, in turns, each with its own "
        "default settings; start-up and imports included. The ratio is baseline over this tree.", files, render)


def depthwise_table(data: dict, part: str) -> Table:
    """``bench/depthwise_speed.py``: ms per image (median of rounds) per case, at each thread count."""
    threads = sorted(data["threads"], key=int, reverse=True)
    cases = list(dict.fromkeys(c for t in threads for c in data["threads"][t][part]))
    rows = [[case, *(num(data["threads"][t][part].get(case, {}).get("ms_per_image")) for t in threads)]
            for case in cases]
    return ["case", *(f"ms / image, {t} thread{'s' if t != '1' else ''}" for t in threads)], rows


def section_depthwise(files: dict[str, dict]) -> list[str]:
    def render(name: str, data: dict) -> list[str]:
        return [f"From `bench/results/{name}`, measured on {machine_of(name, data)}; load average before "
                f"{num(data.get('load_average_before'))}, after {num(data.get('load_average_after'))}.", "",
                *markdown(depthwise_table(data, "model")), "", *markdown(depthwise_table(data, "depthwise")), ""]

    return per_file_section(
        "Forward + backward to the input of EfficientNet-Lite0 (bench/zoo, ImageNet weights) and of its depthwise "
        "convolutions alone, batch 8, fp32, NCHW against channels-last, plain and with the generator's "
        "BN-statistics recording (`python -m bench.depthwise_speed`); the median of rounds that run every case in "
        "turn.", files, render)


def int16_repair_table(data: dict) -> Table:
    """``bench/int16_repair.py``: per set, int8, int8 with the diagnosis's modules at int16, and all int16."""
    rows = []
    for key, e in sorted(data.get("sets", {}).items()):
        a, b = e["int8"]["map"], e["mixed"]["map"]
        rows.append([key, num(a), num(b), signed(b - a), ", ".join(f"`{m}`" for m in e["int16_layers"]),
                     f"{e['int8']['bytes'] / 1024:,.0f} / {e['mixed']['bytes'] / 1024:,.0f}",
                     num(e["all16"]["map"]) if "all16" in e else "-"])
    return ["set", "int8", "int8 + int16 modules", "recovered", "modules at int16", "KiB int8 / mixed",
            "all int16"], rows


def section_int16_repair(files: dict[str, dict]) -> list[str]:
    lines = ["The per-layer diagnosis's fix, measured (`python -m bench.int16_repair`): for each set the job's "
             "int8 file is built and scored, the job's per-layer diagnosis runs on the set's held-out images, and "
             "the modules adding the most noise are kept at int16 activations (`--int16-layers`, TFLite's 16x8 "
             "kernels), built and scored again; 'all int16' is the whole model at int16 activations (`--bits "
             "W8A16`), the most 16-bit activations can give. Names without `model.` are litert-torch's, as "
             "files written before the job mapped them back show them (`1.conv` is `model.1.conv`, `0.obj` "
             "`model.24.m.0.obj`: litert-torch leaves out the containers a model indexes).", ""]
    for name, data in files.items():
        gains = [e["mixed"]["map"] - e["int8"]["map"] for e in data.get("sets", {}).values()]
        mean = f"; mean recovery {signed(statistics.fmean(gains))} over {len(gains)} sets" if gains else ""
        lines += [f"From `bench/results/{name}`, measured on {machine_of(name, data)}; {data['model']} at "
                  f"{data['imgsz']}, tflite-int8 (litert-torch, min/max ranges, {data.get('layout', 'split')} layout), "
                  f"mAP50-95 on LiteRT (float "
                  f"{num(data.get('float'))}), {data['k']} modules at int16{mean}.", "",
                  *markdown(int16_repair_table(data)), ""]
    return lines


def depthwise_targets_table(data: dict) -> Table:
    """``bench/depthwise_targets.py``: build -> the seeds' top-1 per source (mean), and real images'."""
    sources = data.get("sources", [])
    builds = list(dict.fromkeys(k.split("|")[0] for k in data.get("top1", {})))
    rows = []
    for build in builds:
        row = [build]
        for src in sources:
            got = [v for k, v in data["top1"].items() if k.startswith(f"{build}|{src} seed")]
            row.append(", ".join(num(v) for v in got) + (f" ({num(statistics.fmean(got))})" if got else "") or "-")
        row.append(num(data["top1"].get(f"{build}|real")))
        rows.append(row)
    def seeds(src: str) -> str:
        found = sorted({k.split(" seed ")[1] for k in data.get("top1", {}) if f"|{src} seed " in k}, key=int)
        return ", ".join(found)

    return ["build", *(f"{s} (seed {seeds(s)}; mean)" for s in sources), "real"], rows


def section_depthwise_targets(files: dict[str, dict]) -> list[str]:
    lines = ["The bundled depthwise classifier (`cifar_mobilenetv2`) on every target by calibration source and "
             "seed (`python -m bench.depthwise_targets`): each set built as the job builds it for the target "
             "and scored on the same CIFAR-10 test images; real: 256 CIFAR-10 training images. A DGH set is the "
             "job's: 288 images generated together at the job's default budget, the first 256 calibrating.", ""]
    for name, data in files.items():
        lines += [f"From `bench/results/{name}`, measured on {machine_of(name, data)}; {data['model']} "
                  f"({num(data.get('params'))} parameters), top-1 on {num(data.get('val_images'))} test images, "
                  f"float {num(data.get('float'))}; generated sets {data.get('n_images')} images x "
                  f"{data.get('iters')} iterations.", "", *markdown(depthwise_targets_table(data)), ""]
    return lines


def protocol_detector_table(data: dict) -> Table:
    """``bench/protocol_detector.py``: per target, int8 mAP50-95 per DGH seed (mean), real calibration,
    and what the device runtime and Vela said on the jobs that report them."""
    jobs = data.get("jobs", {})
    rows = []
    for target in dict.fromkeys(k.split("|")[0] for k in jobs):
        mine = {k.split("|", 1)[1]: v for k, v in jobs.items() if k.startswith(f"{target}|")}
        dgh = [v for label, v in mine.items() if label.startswith("dgh seed ")]
        values = [v["int8"] for v in dgh]
        mean = f" ({num(statistics.fmean(values))})" if values else ""
        rows.append([target, ", ".join(num(v) for v in values) + mean or "-",
                     num(mine["real"]["int8"]) if "real" in mine else "-",
                     ", ".join(num(v["tflite-micro"]) for v in dgh if "tflite-micro" in v) or "-",
                     "; ".join(sorted({npu_cell(v) for v in mine.values() if "npu ops" in v})) or "-"])
    seeds = sorted({k.split(" seed ")[1] for k in jobs if " seed " in k}, key=int)
    return ["target", f"DGH (seed {', '.join(seeds)}; mean)", "real (coco128 train images)",
            "TFLite Micro, DGH", "Vela: ops on the NPU, ms"], rows


def npu_cell(row: dict) -> str:
    vela = row.get("vela", {})
    return f"{row['npu ops']}, {num(vela.get('inference_ms'))} ms on {vela.get('accelerator', '?')}"


def section_protocol_detector(files: dict[str, dict]) -> list[str]:
    lines = ["A real non-Ultralytics detector through the detector protocol (`python -m bench.protocol_detector`): "
             "Yolo-FastestV2 (dog-qiuqiu; ShuffleNetV2 backbone, two levels, softmax classes; the authors' COCO "
             "weights, their network code read from their repository outside this one, `bench/zoo/"
             "yolo_fastestv2.py`), whole jobs as a user runs them, default settings; the int8 file ends at the six "
             "raw head maps, decoded on the host. mAP50-95 on coco128 val (128 images).", ""]
    for name, data in files.items():
        f = data.get("float", {})
        lines += [f"From `bench/results/{name}`, measured on {machine_of(name, data)}; float mAP50-95 through "
                  f"the protocol {num(f.get('protocol mAP50-95'))}, through the authors' own decode "
                  f"{num(f.get('authors mAP50-95'))} (mAP50 {num(f.get('protocol mAP50'))} and "
                  f"{num(f.get('authors mAP50'))}).", "", *markdown(protocol_detector_table(data)), ""]
    return lines


Section = tuple[str, Callable[[str], bool], Callable[[dict[str, dict]], list[str]]]
SECTIONS: list[Section] = [
    ("Calibration sources x targets", lambda n: n.endswith("_state.json"), section_compare),
    ("`sim` weight rounding: GPTQ against round-to-nearest", lambda n: n.startswith("sim_rounding_"),
     section_rounding),
    ("Three seeds per source", lambda n: n.startswith("seeds_") and "_scales" not in n, section_seeds),
    ("Coarse to fine at 32 pixels: three seeds per schedule", lambda n: n.startswith("seeds_") and "_scales" in n,
     section_schedules),
    ("YOLOv5n over seeds and picks", lambda n: n.startswith("picks_"), section_picks),
    ("Generation speed against MCT", lambda n: n.startswith("generation_"), section_generation),
    ("bfloat16 generation against float32", lambda n: n.startswith("precision_"), section_precision),
    ("Ablation", lambda n: n.startswith("ablation_"), section_ablation),
    ("GPU check", lambda n: n.startswith("gpu_check"), section_gpu),
    ("Edge: Ethos-U NPUs (Vela) and TFLite Micro", lambda n: n.startswith("edge_"), section_edge),
    ("The detector job, stage by stage", lambda n: n.startswith("job_stages_"), section_job_stages),
    ("Real input sizes on a CPU: coarse-to-fine generation", lambda n: n.startswith("input_sizes_"),
     section_input_sizes),
    ("Generation, whole process, against an earlier commit", lambda n: n.startswith("whole_process_"),
     section_whole_process),
    ("Where a 224-pixel depthwise step goes on CPU", lambda n: n.startswith("depthwise_speed_"), section_depthwise),
    ("Reliability: concurrent jobs and kills at random moments", lambda n: n.startswith("reliability_"),
     section_reliability),
    ("tflite-int8 converters: onnx2tf and litert-torch", lambda n: n.startswith("converters_"), section_converters),
    ("tflite-int8 activation ranges", lambda n: n.startswith("tflite_ranges_"), section_ranges),
    ("A 224-pixel classifier over seeds and picks", lambda n: n.startswith("classify_picks_"),
     section_classify_picks),
    ("DGH detector images: do their artifacts set the ranges", lambda n: n.startswith("artifacts_"),
     section_artifacts),
    ("Keeping the noisiest modules at int16", lambda n: n.startswith("int16_repair_"), section_int16_repair),
    ("A depthwise classifier on every target", lambda n: n.startswith("depthwise_targets_"),
     section_depthwise_targets),
    ("A detector through the protocol: Yolo-FastestV2", lambda n: n.startswith("protocol_detector_"),
     section_protocol_detector),
]


def load_results(folder: Path) -> dict[str, Any]:
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def build_doc(results: dict[str, Any]) -> str:
    lines = ["# Results", "",
             "<!-- generated by bench/results_doc.py from bench/results/*.json: edit that script, not this file -->",
             "",
             "Every table here is built by `python bench/results_doc.py` from a file in `bench/results/` that a "
             "bench script wrote; nothing is typed by hand, and the tests fail when this page and the files "
             "disagree. Each table names the machine its file records. Where a file records none, the machine is "
             "named from the file name (`_cpu`: the 2-core CPU, a 2-vCPU AMD EPYC VM, this project's machine; "
             "`_h100`: a lent NVIDIA H100 machine) and the table says so. Top-1 is on the CIFAR-10 test images, "
             "mAP on coco128's validation split. How it is built: [design.md](design.md).", ""]
    claimed: set[str] = set()
    for title, match, build in SECTIONS:
        files = {n: d for n, d in results.items() if n not in claimed and match(n)}
        if not files:
            continue
        claimed |= set(files)
        lines += [f"## {title}", "", *build(files)]
    rest = {n: d for n, d in results.items() if n not in claimed}
    if rest:
        lines += ["## Other result files", "", *section_other(rest)]
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- README block


def readme_block(results: dict[str, Any]) -> str:
    """The README's short results table: DGH against real calibration on every target, plus two lines."""
    lines = [BEGIN, "<!-- generated by bench/results_doc.py from bench/results/*.json: do not edit by hand -->"]
    state = results.get("compare_state.json")
    if state:
        cells = state["cells"]
        targets = ("tflite-int8", "tensorrt-int8", "sim:W8A4", "sim:W4A8")
        rows = []
        for title, _ in compare_tables(state):
            model = title.split("**")[1]
            first = next(v for k, v in cells.items() if k.startswith(model + "|") and "error" not in v)
            for i, source in enumerate(("dgh", "real")):
                label = f"{model}, {first['metric']} (float {first['float']:.2f})" if i == 0 else ""
                row = [label, "DGH" if source == "dgh" else "real images"]
                for t in targets:
                    c = cells.get(f"{model}|{source}|{t}")
                    row.append("-" if c is None or "error" in c else f"{c['quantized']:.2f}")
                rows.append(row)
        conv = converter_of("compare_state.json", state)
        header = [f"{t} ({conv})" if t == "tflite-int8" and conv else t for t in targets]
        lines += ["", f"Full jobs, int8 metric on each model's real validation data, measured on "
                      f"{state.get('machine', 'a machine not recorded')} (`bench/results/compare_state.json`):", "",
                  *markdown((["model, metric (float)", "calibration", *header], rows))]
    picks = results.get("picks_yolov5n_cpu.json")
    if picks:
        skip = {"tensorrt-int8:max", *(["tflite-int8"] if "tflite_ranges_yolov5n_cpu.json" in results else [])}
        summary = {spec: v for spec, v in picks_summary(picks).items() if spec not in skip}
        shapes = sorted({(len(r["per_seed"]), max(map(len, r["per_seed"])), r["n"])
                         for v in summary.values() for r in v.values()})
        over = " or ".join(f"{n} jobs, {s} seeds x {k} picks" for s, k, n in shapes)
        text = "; ".join(f"`{spec}` DGH {v['dgh']['mean']:.2f}, real {v['real']['mean']:.2f}"
                         for spec, v in summary.items() if "dgh" in v and "real" in v)
        where = ("same machine" if state and picks.get("machine") == state.get("machine")
                 else f"measured on {picks.get('machine', 'a machine not recorded')}")
        lines += ["", f"{picks.get('model')} at {picks.get('imgsz')}, mAP50-95, mean of {over} "
                      f"(`bench/results/picks_yolov5n_cpu.json`, {where}): {text}."]
    lines += readme_input_sizes({n: d for n, d in results.items() if n.startswith("input_sizes_")})
    lines += readme_ranges(results)
    lines += readme_converters(results)
    speed = [(n, results[n]) for n in ("generation_r20_cpu.json", "generation_r20_h100.json") if n in results]
    if speed:
        text = "; ".join(f"{d['speedup']:.2f}x on {d['device']}"
                         + (f" ({README_NOTES[n]})" if n in README_NOTES else "")
                         for n, d in speed if "speedup" in d)
        d0 = speed[0][1]
        lines += ["", f"Generation speed, ours over MCT {d0.get('mct', {}).get('version', '')}'s with the same "
                      f"settings ({d0['model']}, {d0['n_images']} images x {d0['iters']} iterations): {text} "
                      f"({', '.join(f'`bench/results/{n}`' for n, _ in speed)})."]
    lines += readme_edge(results)
    lines += ["", END]
    return "\n".join(lines)


def readme_input_sizes(files: dict[str, dict]) -> list[str]:
    """One line: what the default job costs at real input sizes, and its int8 result, per machine (results
    file; the run a case's ``default_run`` names, else its least loaded default DGH run)."""
    machines = []
    for name, data in sorted(files.items()):
        parts = [part for case in data["cases"].items() if (part := _input_size_case(*case))]
        if parts:
            machines.append(f"on {data.get('machine')} (`bench/results/{name}`): {'; '.join(parts)}")
    if not machines:
        return []
    return ["", "The default `tflite-int8` job at real input sizes, one process from a cold cache, measured "
                + ". Measured ".join(machines) + "."]


def _input_size_case(name: str, case: dict) -> str:
    runs = case["runs"]
    key = case.get("default_run") or min((k for k in runs if k.startswith("dgh:")),
                                         key=lambda k: runs[k].get("load_after") or 0.0, default=None)
    if key is None:
        return ""
    run = runs[key]
    quality = input_size_quality(run).split(" on ")[0]
    if "agreement" in run:  # one set is one sample: the seeds' mean, beside real calibration's
        dgh, real = ([r["agreement"]["top1_agreement"] for k, r in runs.items() if k.startswith(f"{source}:")]
                     for source in ("dgh", "real"))
        seeds = f"{len(dgh)} DGH seeds" if len(dgh) > 1 else "1 DGH seed"
        quality = f"top-1 agreement with float {statistics.fmean(dgh):.2f}% over {seeds}" + (
            f" (real calibration {statistics.fmean(real):.2f}%)" if real else "")
    elif "metric" in run:  # every seed's, not one
        seeds = [r["quantized"] for k, r in runs.items() if k.startswith("dgh:") and "quantized" in r]
        if len(seeds) > 1:
            quality = (f"{run['metric']} {' / '.join(num(v) for v in seeds)} over {len(seeds)} DGH seeds "
                       f"(float {num(run['float'])})")
    precision = f", generation in {run['precision']}" if run.get("precision") not in (None, "fp32") else ""
    return (f"{name.replace(':', ' at ')} {num(run['wall_s'], 0)} s (generation {num(run['generation_s'], 0)} s, "
            f"estimated {num(run['estimated_s'], 0)}{precision}), {quality}")


def readme_ranges(results: dict[str, dict]) -> list[str]:
    """One line: tflite-int8's range methods on YOLOv5n over seeds and picks, per converter (one file each)."""
    files = {n: d for n, d in results.items()  # at the size the README quotes, where DGH meets real
             if n.startswith("tflite_ranges_yolov5n") and d.get("imgsz") == 320
             and any(v.get("dgh") and v.get("real") for v in ranges_summary(d).values())}
    if not files:
        return []
    first = next(iter(files.values()))
    machines = {d.get("machine") for d in files.values()}
    parts = []
    for ranges in sorted(files.values(), key=lambda d: d.get("converter") != "litert-torch"):
        text = ", ".join(
            f"`{method}` DGH {statistics.fmean(v['dgh']):.2f} ({min(v['dgh']):.2f} to {max(v['dgh']):.2f}) "
            f"vs real {statistics.fmean(v['real']):.2f}"
            for method, v in ranges_summary(ranges).items() if v.get("dgh") and v.get("real"))
        where = "" if len(machines) == 1 else f" (on {ranges.get('machine')})"
        parts.append(f"{ranges.get('converter')}{where}: {text}")
    builds = first["builds"]
    measured = f", measured on {first.get('machine')}" if len(machines) == 1 else ""
    return ["", f"`tflite-int8` on {first.get('model')} at {first.get('imgsz')}, mAP50-95 (float "
                f"{first.get('float', float('nan')):.2f}) over {len({k.split('|')[2] for k in builds})} seeds x "
                f"{len({k.split('|')[3] for k in builds})} picks by range method "
                f"({', '.join(f'`bench/results/{n}`' for n in files)}{measured}): "
                f"{'; '.join(parts)}."]


def readme_converters(results: dict[str, dict]) -> list[str]:
    """One line: each converter's int8 metric per model, float conversion times and install size."""
    data = results.get("converters_cpu.json")
    if not data:
        return []
    conv = data["converters"]
    names = ordered(conv, ("litert-torch", "onnx2tf"))
    models = [m for m in ordered({m for c in conv.values() for m in c["models"]}, ("demo", *MODEL_ORDER))
              if all(m in conv[n]["models"] and conv[n]["models"][m].get("int8") is not None for n in names)]
    scores = ", ".join(f"{m} " + " vs ".join(num(conv[n]["models"][m]["int8"]) for n in names) for m in models)
    times = "; ".join(f"{n} {min(r['preflight_s'] for r in conv[n]['models'].values()):.1f} to "
                      f"{max(r['preflight_s'] for r in conv[n]['models'].values()):.1f} s" for n in names)
    sizes = " vs ".join(f"{num(conv[n]['installed']['bytes'] / 2**20, 0)} MiB" for n in names
                        if conv[n].get("installed"))
    return ["", f"`tflite-int8` converters, {' vs '.join(names)}, on the same DGH set per model "
                f"(`bench/results/converters_cpu.json`, measured on {data.get('machine')}): int8 metric {scores}; "
                f"float conversion and check {times}; installed {sizes}."]


def replace_block(text: str, block: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {BEGIN} ... {END} block")
    return text[:start] + block + text[end + len(END):]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.results_doc", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file differs from what "
                                                        "would be written")
    p.add_argument("--results", default=str(RESULTS), help="folder of result JSON files")
    p.add_argument("--doc", default=str(DOC), help="the generated page")
    p.add_argument("--readme", default=str(README), help="the README whose results block is rewritten")
    args = p.parse_args(argv)
    results = load_results(Path(args.results))
    doc_path, readme_path = Path(args.doc), Path(args.readme)
    try:
        readme_text = readme_path.read_text()
        wanted = {doc_path: build_doc(results), readme_path: replace_block(readme_text, readme_block(results))}
    except (OSError, ValueError) as err:
        print(f"results_doc: {err}", file=sys.stderr)
        return 2
    stale = [path for path, text in wanted.items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"results_doc: {path} is not what bench/results/ gives; run python bench/results_doc.py",
                  file=sys.stderr)
        return 1 if stale else 0
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wanted[path])
        print(f"wrote {path}")
    if not stale:
        print("docs/results.md and the README's results block are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
