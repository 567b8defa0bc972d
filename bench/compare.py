"""Calibration sources x targets on the shared models, as one Markdown table.

    python bench/compare.py                                  # the README's table (all models)
    python -m bench.compare --models cifar_resnet20 --targets sim:W8A4,tflite-int8

Every cell is a full ``dgh-deploy`` run (generate, calibrate, convert, verify on the target's
runtime). Generated sets are cached, so each (model, source) is generated once for all targets.
Source ``mct`` calibrates with Sony MCT 2.6.1's DGH images (its defaults; the ``bench`` extra
installs MCT), generated once into ``--work``.
Finished cells are kept in ``--state`` (JSON): stop it any time and run it again to continue.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench import common
from bench.common import Case

MODELS = "cifar_resnet20,cifar_resnet56,yolov5n"
SOURCES = "dgh,bns,noise,real"
TARGETS = "sim:W8A4,sim:W4A8,tflite-int8,tensorrt-int8"


def split_spec(spec: str) -> tuple[str, dict[str, int]]:
    """``sim:W8A4`` -> (``sim``, bit widths); a plain target name has no options."""
    target, _, bits = spec.partition(":")
    if not bits:
        return target, {}
    from dgh_deploy.cli import parse_bits

    w, a = parse_bits(bits)
    return target, {"weight_bits": w, "act_bits": a}


def run_cell(case: Case, source: str, spec: str, out_root: Path, threads: int) -> dict:
    """One full ``dgh-deploy`` job: its float and quantized metric, drop and times."""
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
    ).report.to_json()  # the report.json content, as the results keep it
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
    from dgh_deploy.errors import DGHError

    try:
        import model_compression_toolkit  # noqa: F401
    except ImportError as exc:
        raise DGHError("source 'mct' needs Sony MCT 2.6.1, which is not installed",
                       "pip install -e '.[bench]' (./install.sh installs it), or leave mct out of --sources") from exc
    from bench.generation import run_mct
    from dgh_deploy.calibration import CalibrationSet
    from dgh_deploy.generation import default_budget
    from dgh_deploy.loading import load_model
    from dgh_deploy.pipeline import default_holdout

    common.set_threads(threads)
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
    lines = [f"Measured on {state.get('machine', common.machine())}. Each cell: quantized metric "
             "(quantized minus float) on the model's real validation data.", ""]
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


def run(args: argparse.Namespace, state: dict, models: list[str], sources: list[str], targets: list[str]) -> str:
    """Every cell not in ``state`` yet (``state`` is saved to ``--state`` after each), then the table."""
    from dgh_deploy.errors import DGHError
    from dgh_deploy.targets.tflite.target import installed_converter

    all_cases = common.cases(args.assets)
    state["machine"], state["converter"] = common.machine(), installed_converter()
    todo = [(m, s, t) for m in models for s in sources for t in targets if f"{m}|{s}|{t}" not in state["cells"]]
    if args.table_only:
        todo = []
    print(f"{len(todo)} runs to do ({len(state['cells'])} already in {args.state})", flush=True)
    for i, (model, source, target) in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {model} {source} {target}", flush=True)
        try:
            cell = run_cell(all_cases[model], source, target, Path(args.work), args.threads)
        except DGHError as err:
            cell = {"error": str(err)}
        state["cells"][f"{model}|{source}|{target}"] = cell
        common.write_result(args.state, state, indent=2)
        print(f"    {cell}", flush=True)
    # The file shows every cell in the state, not only this run's: a partial re-run keeps the table whole.
    return table(state, *(in_state(state, i, order) for i, order in enumerate((MODELS, SOURCES, TARGETS))))


def main(argv: list[str] | None = None) -> int:
    p = common.BenchParser("compare", __doc__)
    p.add_argument("--models", default=MODELS)
    p.add_argument("--sources", default=SOURCES)
    p.add_argument("--targets", default=TARGETS,
                   help="targets; sim:W<bits>A<bits> picks the simulated bit widths")
    p.add_threads(None)
    p.add_argument("--out", default=str(common.RESULTS / "compare.md"), help="the Markdown table")
    p.add_argument("--state", default=str(common.RESULTS / "compare_state.json"),
                   help="finished cells (JSON): a second run continues from them")
    p.add_argument("--work", default=str(common.WORK / "compare"))
    p.add_argument("--merge", action="append", default=[],
                   help="add the cells of another state file (a run of other models in parallel)")
    p.add_argument("--table-only", action="store_true", help="write the table from the state; run nothing")
    args = p.parse(argv)
    models, sources, targets = (common.split_list(s) for s in (args.models, args.sources, args.targets))
    state = common.read_state(args.state, {"cells": {}})
    for other in args.merge:
        if not Path(other).is_file():
            return p.fail(f"--merge {other}: no such state file")
        state["cells"].update(common.read_state(other, {"cells": {}})["cells"])
    if not args.table_only:
        todo_models = [m for m in models if any(f"{m}|{s}|{t}" not in state["cells"] for s in sources for t in targets)]
        if rc := common.check_cases(p, common.cases(args.assets), todo_models, real="real" in sources):
            return rc
    md = run(args, state, models, sources, targets)
    common.write_text(args.out, md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
