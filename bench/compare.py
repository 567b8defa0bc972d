"""Calibration sources x targets on the shared models, as one Markdown table.

    python bench/compare.py                                  # the README's table (all models)
    python bench/compare.py --models cifar_resnet20 --targets sim:W8A4,tflite-int8

Every cell is a full ``dgh-deploy`` run (generate, calibrate, convert, verify on the target's
runtime). Generated sets are cached, so each (model, source) is generated once for all targets.
Source ``mct`` calibrates with Sony MCT 2.6.1's DGH images (its defaults; the ``bench`` extra
installs MCT), generated once into ``--work``.
Finished cells are kept in ``--state`` (JSON): stop it any time and run it again to continue.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dgh_deploy.artifacts import atomic_path, write_json
from dgh_deploy.errors import DGHError

REPO = Path(__file__).resolve().parents[1]
MODELS = "cifar_resnet20,cifar_resnet56,yolov5n"
SOURCES = "dgh,bns,noise,real"
TARGETS = "sim:W8A4,sim:W4A8,tflite-int8,tensorrt-int8"


@dataclass(frozen=True)
class Case:
    model: str
    weights: str
    val_data: str
    real: str
    imgsz: int | None = None
    n_images: int | None = None


def cases(assets: Path) -> dict[str, Case]:
    c10 = assets / "cifar10"
    return {
        "cifar_resnet20": Case("cifar_resnet20", str(c10 / "resnet20-12fca82f.th"), str(c10 / "test"),
                               str(c10 / "calib")),
        "cifar_resnet56": Case("cifar_resnet56", str(c10 / "resnet56-4bfd9763.th"), str(c10 / "test"),
                               str(c10 / "calib")),
        "yolov5n": Case("yolov5n", str(assets / "yolov5n" / "yolov5n-coco-v6.1.pt"),
                        str(assets / "coco128" / "coco128.yaml"), str(assets / "coco128" / "images" / "train2017"),
                        imgsz=320, n_images=64),
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()}-core CPU ({cpu}), Python {platform.python_version()}"


def split_spec(spec: str) -> tuple[str, dict[str, int]]:
    """``sim:W8A4`` -> (``sim``, bit widths); a plain target name has no options."""
    target, _, bits = spec.partition(":")
    if not bits:
        return target, {}
    from dgh_deploy.cli import parse_bits

    w, a = parse_bits(bits)
    return target, {"weight_bits": w, "act_bits": a}


def run_cell(case: Case, source: str, spec: str, out_root: Path, threads: int) -> dict:
    import dgh_deploy

    target, options = split_spec(spec)
    if source == "real":
        calib = f"real:{case.real}"
    elif source == "mct":
        calib = str(mct_set(case, out_root, threads))
    else:
        calib = source
    t0 = time.perf_counter()
    report = dgh_deploy.deploy(
        target=target, model=case.model, weights=case.weights, imgsz=case.imgsz, calib=calib,
        n_images=case.n_images, val_data=case.val_data,
        out=str(out_root / f"{case.model}-{source}-{spec.replace(':', '-')}"),
        threads=threads, human_report=False, **options,
    )
    m = report["metrics"]
    return {"float": m["float"][m["metric"]], "quantized": m["quantized"][m["metric"]], "drop": m["drop"],
            "metric": m["metric"], "data_free": m.get("data_free", {}), "seconds": round(time.perf_counter() - t0, 1),
            "generation_s": report["times_s"].get("generation")}


def mct_set(case: Case, out_root: Path, threads: int) -> Path:
    """Sony MCT 2.6.1's DGH images for ``case`` (its defaults; our budget's image count, plus
    the held-out images, and iterations), made once and kept in ``out_root``."""
    path = out_root / f"{case.model}-mct.npz"
    if path.is_file():
        return path
    import torch

    try:
        import model_compression_toolkit  # noqa: F401
    except ImportError as exc:
        raise DGHError("source 'mct' needs Sony MCT 2.6.1, which is not installed",
                       "pip install -e '.[bench]' (./install.sh installs it), or leave mct out of --sources") from exc
    sys.path.append(str(REPO))
    from bench.generation import run_mct
    from dgh_deploy.calibration import CalibrationSet
    from dgh_deploy.generation import default_budget
    from dgh_deploy.loading import load_model
    from dgh_deploy.pipeline import default_holdout

    torch.set_num_threads(threads)
    model = load_model(case.model, case.weights, imgsz=case.imgsz)
    budget = default_budget(model, "cpu")
    n = case.n_images or budget.n_images
    total = n + default_holdout(n)  # as for our generated sets: the job holds these out
    res = run_mct(model, total, budget.iters, "cpu", None)
    print(f"    MCT {res['version']}: {total} images x {budget.iters} iterations in {res['wall_s']:.0f} s", flush=True)
    calib = CalibrationSet(res["images"], "dgh-mct", {"generator": f"MCT {res['version']}", "iters": budget.iters},
                           {"time_s": round(res["wall_s"], 1)})
    path.parent.mkdir(parents=True, exist_ok=True)
    calib.save(path)
    return path


def table(state: dict, models: list[str], sources: list[str], targets: list[str]) -> str:
    lines = [f"Measured on {state.get('machine', machine())}. Each cell: quantized metric (quantized minus float) "
             "on the model's real validation data.", ""]
    for model in models:
        first = next((v for k, v in state["cells"].items() if k.startswith(model + "|") and "error" not in v), None)
        if first is None:
            continue
        lines += [f"**{model}**: {first['metric']}, float {first['float']:.2f}", "",
                  "| calibration | " + " | ".join(targets) + " |", "| --- |" + " --- |" * len(targets)]
        for source in sources:
            row = []
            for target in targets:
                cell = state["cells"].get(f"{model}|{source}|{target}")
                if cell is None:
                    row.append("not run yet")
                elif "error" in cell:
                    row.append(f"error: {cell['error'][:60]}")
                else:
                    row.append(f"{cell['quantized']:.2f} ({-cell['drop']:+.2f})")
            lines.append(f"| {source} | " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def in_state(state: dict, part: int, order: str) -> list[str]:
    """Every model (part 0), source (1) or target (2) the state has cells for, in ``order`` first."""
    seen = dict.fromkeys(key.split("|")[part] for key in state["cells"])
    first = [x for x in order.split(",") if x in seen]
    return first + [x for x in seen if x not in first]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--assets", default=str(REPO.parent / "shared" / "assets"))
    p.add_argument("--models", default=MODELS)
    p.add_argument("--sources", default=SOURCES)
    p.add_argument("--targets", default=TARGETS,
                   help="targets; sim:W<bits>A<bits> picks the simulated bit widths")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "compare.md"))
    p.add_argument("--state", default=str(REPO / "bench" / "results" / "compare_state.json"))
    p.add_argument("--work", default=str(REPO / "out" / "compare"))
    p.add_argument("--merge", action="append", default=[],
                   help="add the cells of another state file (a run of other models in parallel)")
    p.add_argument("--table-only", action="store_true", help="write the table from the state; run nothing")
    args = p.parse_args()
    assets = Path(args.assets)
    if not assets.is_dir():
        print(f"compare: shared assets not found at {assets}; pass --assets", file=sys.stderr)
        return 2
    all_cases = cases(assets)
    models, sources, targets = (s.split(",") for s in (args.models, args.sources, args.targets))
    state_path = Path(args.state)
    state = json.loads(state_path.read_text()) if state_path.is_file() else {"cells": {}}
    for other in args.merge:
        state["cells"].update(json.loads(Path(other).read_text())["cells"])
    state["machine"] = machine()
    todo = [(m, s, t) for m in models for s in sources for t in targets if f"{m}|{s}|{t}" not in state["cells"]]
    if args.table_only:
        todo = []
    print(f"{len(todo)} runs to do ({len(state['cells'])} already in {state_path})", flush=True)
    for i, (model, source, target) in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {model} {source} {target}", flush=True)
        try:
            cell = run_cell(all_cases[model], source, target, Path(args.work), args.threads)
        except DGHError as err:
            cell = {"error": str(err)}
        state["cells"][f"{model}|{source}|{target}"] = cell
        write_json(state_path, state)
        print(f"    {cell}", flush=True)
    # The file shows every cell in the state, not only this run's: a partial re-run keeps the table whole.
    md = table(state, *(in_state(state, i, order) for i, order in enumerate((MODELS, SOURCES, TARGETS))))
    with atomic_path(args.out) as tmp:
        tmp.write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
