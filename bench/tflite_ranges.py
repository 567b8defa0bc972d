"""tflite-int8 activation ranges and weight rounding on a detector, over seeds and picks: int8 mAP50-95 per build.

One job on YOLOv5n at 320 with min/max ranges scored anywhere from 25.4 to 28.0 mAP50-95 by the
DGH set it calibrated on (float 27.37): a range method must be chosen by its spread over sets,
not by one run. This builds the tflite-int8 file for every (method, source, seed, pick) as a job
does (the target's own build: export, calibration, TensorFlow's or ai-edge-quantizer's
quantizer with the method's ranges, the float-parity and integer-only checks) and scores it on
LiteRT on the validation data, as the job does. The float conversion, which does not depend on
the calibration set, is made once (the job's check before generation) and shared by every build;
the float score too. Sets and picks are ``bench/detect_picks.py``'s (same folder, same rotation):
72 images per (source, seed), three picks of 64. Finished builds are kept in ``--json``: stop
and run again to continue.

mAP50-95 on 128 images moves by a few tenths when any range moves at all, so each build also
records how closely the int8 file follows the float model on the first validation images
(``agreement``: the task's boxes and scores SQNR in dB and box agreement, as the job's data-free
check computes them), a smoother reading of the same change.

    .venv/bin/python -m bench.tflite_ranges --methods minmax,percentile:99.999,mse --sources dgh,real
    .venv/bin/python -m bench.tflite_ranges --imgsz 640 --methods minmax/gptq,mse/gptq --picks 1 \
        --json bench/results/tflite_ranges_yolov5n_640_litert_cpu.json

A method is an ``--act-range`` value (``percentile:P`` sets ``--percentile P``), optionally followed by
``/ROUNDING``, the ``--weight-rounding`` (``minmax/gptq``); without it the weights are rounded to the
nearest, as every build before GPTQ pre-rounding was. ``^H`` sets ``--output-headroom H``
(``minmax^1``: the calibration set's own output range; without it, the task's). A trailing ``+bc``
turns ``--bias-correction`` on (``mse/gptq+bc``); without it the build has none, as every build
before the correction had.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import common
from bench.common import Case, set_path
from bench.detect_picks import HOLDOUT, make_set, pick_path

AGREEMENT_BYTES = 256 << 20  # outputs kept per runner for the agreement: YOLOv5n's maps at 640 are ~9 MB an image


def apply_method(target: Any, method: str) -> None:
    """Set a tflite-int8 ``target``'s ranges, rounding, output headroom and bias correction from a method
    string (see the module docstring): ``ACT_RANGE[:PERCENTILE][/ROUNDING][^HEADROOM][+bc]``, rounding to
    the nearest when none is named, the task's headroom when none is given, no bias correction without
    ``+bc``."""
    method, corrected, _ = method.partition("+bc")
    target.bias_correction = "on" if corrected else "off"
    method, _, headroom = method.partition("^")
    target.output_headroom = float(headroom) if headroom else None
    spec, _, rounding = method.partition("/")
    name, _, pct = spec.partition(":")
    target.weight_rounding = rounding or "nearest"
    target.options = replace(target.options, act_range=name, percentile=float(pct) if pct else None)


class Builder:
    """One tflite-int8 target and model for every build: one float conversion, one float score."""

    def __init__(self, case: Case, threads: int, converter: str, layout: str = "") -> None:
        from dgh_deploy.loading import load_model
        from dgh_deploy.targets import get_target
        from dgh_deploy.tasks import get_task

        self.case = case
        self.target = get_target("tflite-int8", converter=converter, layout=layout)
        self.model = self.target.deploy_form(load_model(case.model, case.weights, None, case.imgsz))
        self.task = get_task(self.model.task, self.model)
        self.target.options = replace(self.target.options, threads=threads)
        self.target.progress = False
        t0 = time.perf_counter()
        self.early = self.target.preflight(self.model)
        print(f"float conversion and check: {time.perf_counter() - t0:.0f} s", flush=True)
        self._float_outputs: list[Any] | None = None

    def float_metric(self) -> float:
        from dgh_deploy.runtime.base import RecordingRunner, TorchRunner

        recorded = RecordingRunner(TorchRunner(self.model.module), keep_bytes=AGREEMENT_BYTES)
        value = self.metric(recorded)
        self._float_outputs = recorded.outputs()
        return value

    def agreement(self, runner: Any) -> dict[str, float]:
        """The int8 outputs ``runner`` recorded against the float model's on the same images."""
        if self._float_outputs is None:
            self.float_metric()
        assert self._float_outputs is not None
        candidate = runner.outputs()
        n = min(len(self._float_outputs[0]), len(candidate[0]))
        reference, candidate = [o[:n] for o in self._float_outputs], [o[:n] for o in candidate]
        return {k: round(v, 3) for k, v in self.task.agreement(reference, candidate).items()}

    def int8_metric(self, calib_path: Path, method: str) -> tuple[float, dict[str, Any], dict[str, float]]:
        """mAP50-95 on LiteRT of the file built from ``calib_path``'s first 64 images by ``method``, the
        build's stage times and its agreement with the float model."""
        from dgh_deploy.calibration import CalibrationSet
        from dgh_deploy.runtime.base import RecordingRunner

        apply_method(self.target, method)
        calib, _held = CalibrationSet.load(calib_path).split(HOLDOUT)
        with tempfile.TemporaryDirectory(prefix="dgh-bench-ranges-") as tmp:
            result = self.target.build(self.model, calib, Path(tmp), self.early)
            recorded = RecordingRunner(result.runner, keep_bytes=AGREEMENT_BYTES)
            value = self.metric(recorded)
        return value, {k: round(v, 1) for k, v in result.timings.items()}, self.agreement(recorded)

    def metric(self, runner: Any) -> float:
        return float(self.task.evaluate(runner, self.model, self.case.val_data, None)[self.task.metric])


def checked_layout(state: dict[str, Any], done: dict[str, Any], asked: str, json_path: str) -> str:
    """The detector layout a bench's builds use: ``asked`` (default maps, tflite-int8's), refused
    where ``state`` already holds builds (``done``) of another. Files written before the maps layout
    record none: theirs was split."""
    layout = asked or "maps"
    if done and state.get("layout", "split") != layout:
        sys.exit(f"{json_path} holds builds of the {state.get('layout', 'split')} layout: pass --layout "
                 f"{state.get('layout', 'split')} or another --json")
    return layout


def summary(state: dict[str, Any], methods: list[str], sources: list[str], seeds: list[int], picks: int) -> str:
    flt = state.get("float", float("nan"))
    lines = [f"Measured on {state['machine']}; {state['model']} at {state['imgsz']}, "
             f"tflite-int8 ({state['converter']}, {state.get('layout', 'split')} layout) "
             f"mAP50-95 on LiteRT on its validation data (float {flt:.2f}); "
             "picks of one seed are separated by ',', seeds by ';'. 'within 1.0' counts the builds no more than "
             "1.0 point below float.", "",
             "| method | source | picks | mean | min .. max | within 1.0 | mean minus real |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for method in methods:
        values = {src: [[state["builds"].get(f"{method}|{src}|{s}|{k}") for k in range(picks)] for s in seeds]
                  for src in sources}
        done = {src: [v for seed in rows for v in seed if v is not None] for src, rows in values.items()}
        real = statistics.fmean(done["real"]) if done.get("real") else None
        for src, rows in values.items():
            got = done[src]
            text = "; ".join(", ".join("-" if v is None else f"{v:.2f}" for v in seed) for seed in rows)
            if not got:
                lines.append(f"| {method} | {src} | {text} | - | - | - | - |")
                continue
            mean = statistics.fmean(got)
            within = sum(v >= flt - 1.0 for v in got)
            diff = "-" if real is None else f"{mean - real:+.2f}"
            lines.append(f"| {method} | {src} | {text} | {mean:.2f} ({len(got)}) | {min(got):.2f} .. {max(got):.2f} "
                         f"| {within}/{len(got)} | {diff} |")
    return "\n".join(lines)


def run(args: argparse.Namespace, case: Case) -> dict[str, Any]:
    if args.imgsz:
        case = replace(case, imgsz=args.imgsz)
    sources, methods = common.split_list(args.sources), common.split_list(args.methods)
    seeds = common.parse_seeds(args.seeds)
    folder = Path(args.sets or common.WORK / "picks" / ("sets" if case.imgsz == 320 else f"sets{case.imgsz}"))
    folder.mkdir(parents=True, exist_ok=True)
    state = common.read_state(args.json, {"builds": {}, "timings": {}})
    from dgh_deploy.targets.tflite.target import installed_converter

    layout = state["layout"] = checked_layout(state, state["builds"], args.layout, args.json)
    state.update(machine=common.machine(), model=case.model, imgsz=case.imgsz,
                 converter=args.converter or installed_converter())
    for src in sources:
        for seed in seeds:
            if not set_path(folder, src, seed).is_file():
                make_set(case, src, seed, 64 + HOLDOUT, args.iters, set_path(folder, src, seed))
    todo = [(m, src, seed, k) for m in methods for src in sources for seed in seeds for k in range(args.picks)
            if f"{m}|{src}|{seed}|{k}" not in state["builds"]]
    print(f"{len(todo)} builds to do ({len(state['builds'])} already in {args.json})", flush=True)
    if todo:
        builder = Builder(case, args.threads, args.converter, layout)
        if "float" not in state:
            state["float"] = builder.float_metric()
            common.write_result(args.json, state, indent=2)

        def build(m: str, src: str, seed: int, k: int) -> float:
            value, timings, agreement = builder.int8_metric(pick_path(folder, src, seed, k), m)
            key = f"{m}|{src}|{seed}|{k}"
            state["timings"][key] = timings
            state.setdefault("agreement", {})[key] = agreement
            return value

        common.run_pending(args.json, state, "builds", todo, build, "{:.2f}".format, common.pick_label)
    print(summary(state, methods, sources, seeds, args.picks))
    return state


def main(argv: list[str] | None = None) -> int:
    p = common.BenchParser("tflite_ranges", __doc__)
    p.add_argument("--model", default="yolov5n", help="a detector of bench.common's cases")
    p.add_argument("--methods", default="minmax,percentile:99.999,mse",
                   help="tflite-int8 --act-range values; percentile:P sets --percentile P")
    p.add_argument("--sources", default="dgh,real")
    p.add_seeds()
    p.add_argument("--picks", type=int, default=3)
    p.add_argument("--converter", default="", help="onnx2tf | litert-torch (default: the installed one)")
    p.add_argument("--iters", type=int, default=200, help="dgh iterations (the CPU default)")
    p.add_argument("--layout", default="", choices=("", "maps", "split"),
                   help="the detector's output layout (default: the target's, maps)")
    p.add_threads(2)
    p.add_argument("--imgsz", type=int, default=None, help="input size (default: the case's, 320)")
    p.add_argument("--sets", default="", help="where the sets are kept (default: out/picks/sets, sets<imgsz> "
                   "for another size)")
    p.add_json(str(common.RESULTS / "tflite_ranges_yolov5n_cpu.json"),
               help="finished builds (JSON): a second run continues from them")
    args = p.parse(argv)
    return common.run_on_case(p, args, run, real="real" in common.split_list(args.sources))


if __name__ == "__main__":
    sys.exit(main())
