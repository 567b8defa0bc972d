"""The per-layer diagnosis's fix, measured: tflite-int8 with the noisiest modules at int16 (16x8).

The 640 YOLOv5n job loses 2.4 to 3 mAP50-95 to int8 on every DGH set (float 33.08, DGH minmax
30.58 / 30.76 / 30.68 with ranges taken on two threads, ``bench/tflite_ranges.py --imgsz 640``;
30.00 / 30.31 / 30.66 on one, as every build takes them now). For each (source, seed) set this
builds the job's int8 file, scores it on LiteRT, runs the job's per-layer diagnosis on the job's
held-out images (the last 8 of the set; 2 of them at 640, the job's pixel budget), keeps the
``--k`` modules that add the most noise (``repair_candidates``) at int16 activations
(``--int16-layers``), builds and scores again. ``--all16`` also builds the whole model at int16
activations (``--bits W8A16``), the ceiling of what 16-bit activations can give. The float
conversion and score are made once. Finished builds are kept in ``--json``: stop and run again to
continue.

    .venv/bin/python -m bench.int16_repair --imgsz 640 --seeds 0,1,2 --k 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Case, set_path
from bench.detect_picks import HOLDOUT
from bench.tflite_ranges import Builder, checked_layout


def build_and_score(builder: Builder, calib: Any, int16_layers: tuple[str, ...] = (), act_bits: int = 8,
                    held: Any = None) -> dict[str, Any]:
    """One build of the job's int8 file (with ``int16_layers`` at int16): its mAP, size and diagnosis."""
    from dgh_deploy.verification.layers import diagnosis_images

    target = builder.target
    target.int16_layers = int16_layers
    target.options = replace(target.options, act_bits=act_bits)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dgh-bench-int16-") as tmp:
        result = target.build(builder.model, calib, Path(tmp), builder.early)
        out: dict[str, Any] = {"map": builder.metric(result.runner), "bytes": result.artifacts["model"].stat().st_size}
        if held is not None:
            n = diagnosis_images(len(held), builder.model.imgsz)
            out["rows"] = target.layer_errors(builder.model, result, held.images[:n])
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def run_seed(builder: Builder, path: Path, k: int, all16: bool) -> dict[str, Any]:
    from dgh_deploy.calibration import CalibrationSet
    from dgh_deploy.verification.layers import repair_candidates, summarise

    calib, held = CalibrationSet.load(path).split(HOLDOUT)
    int8 = build_and_score(builder, calib, held=held)
    rows = int8.pop("rows")
    layers = repair_candidates(rows, k)
    worst = summarise(rows, 0, "", "")
    mixed = build_and_score(builder, calib, tuple(layers))
    entry = {"int8": int8, "int16_layers": layers, "mixed": mixed,
             "largest_fall": worst.largest_fall.to_json() if worst.largest_fall else None,
             "median_db": worst.median_db}
    if all16:
        entry["all16"] = build_and_score(builder, calib, act_bits=16)
    return entry


def summary(state: dict[str, Any]) -> str:
    from bench.results_doc import int16_repair_table, markdown

    return "\n".join([f"{state['model']} at {state['imgsz']}, mAP50-95 (float {state['float']:.2f}), measured on "
                      f"{state['machine']}:", *markdown(int16_repair_table(state))])


def run(args: argparse.Namespace, case: Case) -> dict[str, Any]:
    case = replace(case, imgsz=args.imgsz or case.imgsz)
    folder = Path(args.sets or common.WORK / "picks" / ("sets" if case.imgsz == 320 else f"sets{case.imgsz}"))
    state = common.read_state(args.json, {"sets": {}})
    state["layout"] = checked_layout(state, state["sets"], args.layout, args.json)
    state.update(machine=common.machine(), model=case.model, imgsz=case.imgsz, k=args.k)
    todo = [(src, seed) for src in common.split_list(args.sources) for seed in common.parse_seeds(args.seeds)
            if f"{src} seed {seed}" not in state["sets"]]
    missing = [str(set_path(folder, src, seed)) for src, seed in todo if not set_path(folder, src, seed).is_file()]
    if missing:
        raise SystemExit(f"bench.int16_repair: no set {', '.join(missing)}; make them with bench.tflite_ranges")
    if todo:
        builder = Builder(case, args.threads, "litert-torch", state["layout"])
        state.setdefault("float", builder.float_metric())
        for i, (src, seed) in enumerate(todo, 1):
            t0 = time.perf_counter()
            entry = run_seed(builder, set_path(folder, src, seed), args.k, args.all16 and i == 1)
            state["sets"][f"{src} seed {seed}"] = entry
            common.write_result(args.json, state, indent=2)
            print(f"[{i}/{len(todo)}] {src} seed {seed}: int8 {entry['int8']['map']:.2f}, with "
                  f"{entry['int16_layers']} at int16 {entry['mixed']['map']:.2f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    print(summary(state))
    return state


def main(argv: list[str] | None = None) -> int:
    p = common.BenchParser("int16_repair", __doc__)
    p.add_argument("--model", default="yolov5n", help="a detector of bench.common's cases")
    p.add_argument("--sources", default="dgh")
    p.add_seeds()
    p.add_argument("--k", type=int, default=4, help="modules kept at int16")
    p.add_argument("--all16", action="store_true", help="also build the whole model at int16 (first set only)")
    p.add_threads(2)
    p.add_argument("--imgsz", type=int, default=None, help="input size (default: the case's, 320)")
    p.add_argument("--sets", default="", help="where bench.tflite_ranges keeps the sets")
    p.add_argument("--layout", default="", choices=("", "maps", "split"),
                   help="the detector's output layout (default maps, tflite-int8's; a results file keeps its own)")
    p.add_json(str(common.RESULTS / "int16_repair_yolov5n_cpu.json"),
               help="finished sets (JSON): a second run continues from them")
    args = p.parse(argv)
    return common.run_on_case(p, args, run, real=False)


if __name__ == "__main__":
    sys.exit(main())
