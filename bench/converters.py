"""The two tflite-int8 converters side by side: onnx2tf and litert-torch (+ ai-edge-quantizer).

    python -m bench.converters --venvs .venv,.venv-onnx2tf    # both, each in its own venv, one command
    python -m bench.converters                                # only the converter this venv has

The two stacks cannot share a venv, so ``--venvs`` runs this script once in each (one after the
other) and both write into the same ``--json``. Per model, one DGH set is generated once into
``--work/MODEL_dgh.npz`` (``--n-images`` x ``--iters``, plus the images a job holds out) and
every converter calibrates on that very set, so the two differ in conversion only. Each model has
its own budget (``BUDGETS``; ``--n-images`` / ``--iters`` set one for every model): classifiers 128 x
250, YOLOv5n at 320 the 64 x 200 of ``bench/detect_picks.py``. ``yolov8n`` is Ultralytics'
anchor-free YOLOv8n built from its yaml with random weights (the assets hold no trained
anchor-free detector): its row measures conversion (parity, ops, times) and int8 against float on
the held-out DGH images, not mAP, so it gets a smaller set and no validation run. Per converter
and model, from one ``tflite-int8`` job: float parity against PyTorch (max |difference|, top-1
agreement, on the calibration images), the int8 metric on the real validation data (LiteRT,
``--val-limit`` images), the ops of the int8 graph, the float conversion time (the check before
generation, with its parity check) and the int8 conversion time, the int8 file's size, and the installed size of the
converter's own packages (what its stack adds to the core install). A model already in the file
for a converter is skipped unless ``--rerun``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import common

MODELS = "demo,cifar_resnet20"
# Below the jobs' own budgets: the comparison needs one shared set per model, not the best one.
DEFAULT_BUDGET = (128, 250)
BUDGETS = {"yolov5n": (64, 200), "yolov8n": (32, 100)}
VAL_LIMIT = 1000
STACKS = {"onnx2tf": ("onnx2tf", "tensorflow", "tf_keras", "ai-edge-litert", "onnxsim", "sng4onnx",
                      "onnx_graphsurgeon"),
          "litert-torch": ("litert-torch", "ai-edge-quantizer", "ai-edge-litert")}


def converter_cases(assets: Path) -> dict[str, common.Case]:
    """The shared cases, plus the bundled demo (a CIFAR-10 ResNet-20 with its own weights)."""
    cases = common.cases(assets)
    c10, v5 = cases["cifar_resnet20"], cases["yolov5n"]
    return {"demo": common.Case("demo", "", c10.val_data, c10.real), **cases,
            "yolov8n": common.Case("yolov8n.yaml", "", v5.val_data, v5.real, imgsz=v5.imgsz)}


def untrained(case: common.Case) -> bool:
    """A model built from an Ultralytics yaml, with random weights: no accuracy to measure."""
    return case.model.endswith(".yaml") and not case.weights


def budget(name: str, n_images: int | None, iters: int | None) -> dict[str, int]:
    """The DGH set's calibration images and iterations for model ``name`` (the options win)."""
    n, it = BUDGETS.get(name, DEFAULT_BUDGET)
    return {"n_images": n_images or n, "iters": iters or it}


def dgh_set(case: common.Case, path: Path, n_images: int, iters: int) -> Path:
    """One DGH set for ``case`` (plus the held-out images a job takes), generated once into ``path``."""
    if path.is_file():
        return path
    import dgh_deploy
    from dgh_deploy.pipeline import default_holdout

    path.parent.mkdir(parents=True, exist_ok=True)
    dgh_deploy.generate(model=case.model, weights=case.weights or None, imgsz=case.imgsz,
                        n_images=n_images + default_holdout(n_images), iters=iters, out=path, progress=False)
    return path


def stack_bytes(converter: str) -> dict[str, Any]:
    """Bytes of the distributions the converter's packages pull in beyond what the core install has."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    def closure(names: list[str]) -> set[str]:
        seen: set[str] = set()
        todo = [n.lower().replace("_", "-") for n in names]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            try:
                dist = md.distribution(name)
            except md.PackageNotFoundError:
                continue
            seen.add(name)
            for req in dist.requires or []:
                r = Requirement(req)
                if r.marker is None or r.marker.evaluate({"extra": ""}):
                    todo.append(r.name.lower().replace("_", "-"))
        return seen

    core = closure(["dgh-deploy"]) - {"dgh-deploy"}
    extra = sorted(closure(list(STACKS[converter])) - core)
    total = 0
    for name in extra:
        for f in md.distribution(name).files or []:
            p = Path(f.locate())
            if p.is_file():
                total += p.stat().st_size
    return {"bytes": total, "distributions": extra}


def int8_ops(path: Path) -> dict[str, int]:
    from dgh_deploy.runtime.litert_runner import open_interpreter

    ops = open_interpreter(path, delegates=False)._get_ops_details()  # no public op list
    return dict(sorted(Counter(str(op["op_name"]) for op in ops).items()))


def run_job(case: common.Case, converter: str, calib: Path, out: Path, val_limit: int,
            threads: int) -> dict[str, Any]:
    import dgh_deploy

    val_data = None if untrained(case) else case.val_data
    return dgh_deploy.deploy(target="tflite-int8", converter=converter, model=case.model, weights=case.weights or None,
                             imgsz=case.imgsz, calib=str(calib), val_data=val_data, val_limit=val_limit,
                             out=str(out), threads=threads, human_report=False).report.to_json()


def model_result(report: dict[str, Any], out: Path, seconds: float) -> dict[str, Any]:
    m, t = report["metrics"], report["target"]
    metric = m["metric"]
    parity = t["float_parity"]
    scored = "quantized" in m  # not for an untrained model
    return {
        "model": report["model"]["name"], "metric": metric,
        "calibration": {k: report["calibration"][k] for k in ("source", "images", "held_out")},
        "float": m["float"][metric] if scored else None, "int8": m["quantized"][metric] if scored else None,
        "images": int(m["quantized"]["images"]) if scored else 0,
        "float_parity": {"max_abs_error": parity["max_abs_error"], "top1_agreement": parity["top1_agreement"],
                         "images": parity["images"], "inputs": parity["inputs"]},
        "data_free": m.get("data_free"),
        "int8_ops": int8_ops(out / report["artifacts"]["model"]["path"]),
        "int8_bytes": report["artifacts"]["model"]["bytes"],
        "preflight_s": round(report["times_s"].get("preflight", 0.0), 2),  # float conversion and its check
        "int8_conversion_s": round(report["times_s"]["conversion"], 2),
        "tflite_micro": t.get("tflite_micro"),
        "job_seconds": round(seconds, 1),
    }


def in_venvs(venvs: list[str], argv: list[str]) -> int:
    """This script, in each venv in turn, with the same options (less ``--venvs``)."""
    rest, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--venvs":
            skip = True
        elif not a.startswith("--venvs="):
            rest.append(a)
    for venv in venvs:
        python = Path(venv) / "bin" / "python"
        if not python.is_file():
            print(f"bench.converters: {python} not found (./install.sh, ./install.sh --onnx2tf)", file=sys.stderr)
            return 2
        print(f"--- {venv}")
        rc = subprocess.call([str(python), "-m", "bench.converters", *rest], cwd=common.REPO)
        if rc:
            return rc
    return 0


def main(argv: list[str] | None = None) -> int:
    p = common.BenchParser("converters", __doc__)
    p.add_argument("--models", default=MODELS)
    p.add_argument("--venvs", default="", help="run in each of these venvs (comma-separated), e.g. .venv,.venv-onnx2tf")
    p.add_argument("--converter", default="", help="default: the one this venv has")
    p.add_argument("--n-images", type=int, default=None, help="DGH calibration images (default: per model)")
    p.add_argument("--iters", type=int, default=None, help="DGH iterations (default: per model)")
    p.add_argument("--val-limit", type=int, default=VAL_LIMIT, help="classifier test images (spread evenly)")
    p.add_threads()
    p.add_json(str(common.RESULTS / "converters_cpu.json"))
    p.add_argument("--work", default=str(common.WORK / "converters"))
    p.add_argument("--rerun", action="store_true", help="run what the results file already has again")
    args = p.parse(argv)
    if args.venvs:
        return in_venvs(common.split_list(args.venvs), list(sys.argv[1:] if argv is None else argv))
    models = common.split_list(args.models)
    cases = converter_cases(args.assets)
    unknown = [m for m in models if m not in cases]
    if unknown:
        return p.fail(f"unknown model {', '.join(unknown)} (one of {', '.join(cases)})")
    if rc := p.check_assets(*(f for m in models for f in cases[m].files(real=False) if f)):
        return rc
    from dgh_deploy.targets.tflite.target import installed_converter

    converter = args.converter or installed_converter()
    common.set_threads(args.threads)
    state = common.read_state(args.json, {"converters": {}})
    if old := state.pop("budget", None):  # files from before each model had its own budget
        for c in state["converters"].values():
            for row in c["models"].values():
                row.setdefault("budget", old)
    state.update(machine=common.machine(), val_limit=args.val_limit)
    entry = state["converters"].setdefault(converter, {"models": {}})
    entry["installed"] = stack_bytes(converter)
    for name in models:
        if name in entry["models"] and not args.rerun:
            print(f"{converter} {name}: in {args.json} already (--rerun to run it again)")
            continue
        case, out = cases[name], Path(args.work) / f"{name}_{converter}"
        b = budget(name, args.n_images, args.iters)
        calib = dgh_set(case, Path(args.work) / f"{name}_dgh.npz", b["n_images"], b["iters"])
        t0 = time.perf_counter()
        report = run_job(case, converter, calib, out, args.val_limit, args.threads)
        entry["models"][name] = {**model_result(report, out, time.perf_counter() - t0), "budget": b,
                                 "untrained": untrained(case)}
        entry["versions"] = {k: v for k, v in report["environment"]["versions"].items()}
        common.write_result(args.json, state)
        r = entry["models"][name]
        scores = (f"float {r['float']:.2f}, int8 {r['int8']:.2f} on {r['images']} images" if r["int8"] is not None
                  else f"int8 vs float on held-out DGH images {r['data_free']}")
        print(f"{converter} {name}: {r['metric']} {scores}; parity max |diff| "
              f"{max(r['float_parity']['max_abs_error']):.2g}; preflight "
              f"{r['preflight_s']:.1f} s, int8 {r['int8_conversion_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
