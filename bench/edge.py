"""Edge figures: Ethos-U placement, memory and time (Vela), and LiteRT against TFLite Micro.

    python -m bench.edge                                       # demo, cifar_resnet20, yolov5n, yolov8n at 320
    python -m bench.edge --models demo --val-limit 500 --json /tmp/edge.json

Per model, one ``dgh-deploy --target ethos-u`` job on one DGH set at the job's default budget
(generated once into ``--work/MODEL_dgh.npz``: a second run only converts and scores), verified
on the model's real validation data: float, LiteRT and TFLite Micro on the same images, and the
two runtimes compared image by image. The job's int8 .tflite is then compiled by Vela for every entry of
``--configs`` (``NPU[/MEMORY_MODE[/SYSTEM_CONFIG]]``, Vela's defaults for the rest). Results go to
``--json`` (``bench/results/edge_cpu.json``), a model at a time: stop it and run it again to go on.
``python bench/results_doc.py`` renders them into docs/results.md.

``yolov8n`` (Ultralytics' anchor-free head, built from its yaml) has no trained weights here: its
job shows placement, memory and time only (noise calibration; no metric, no TFLite Micro run).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common

MODELS = "demo,cifar_resnet20,yolov5n,yolov8n"
# Models with no trained weights here: (model, input size). Vela's placement, memory and time
# depend on the graph alone, so these are compiled from noise-calibrated untrained weights.
PLACEMENT_ONLY = {"yolov8n": ("yolov8n.yaml", 320)}
CONFIGS = "ethos-u55-128,ethos-u65-256,ethos-u55-128/Sram_Only_512KB"
# The classifiers are scored on 2,000 test images (TFLite Micro's reference kernels take about
# 30 ms per ResNet-20 image); coco128 has 128.
VAL_LIMIT = 2000


def edge_cases(assets: Path) -> dict[str, common.Case]:
    """The shared cases, plus the bundled models (the demo ResNet-20 and the depthwise MobileNetV2, each
    with its own weights)."""
    cases = common.cases(assets)
    c10 = cases["cifar_resnet20"]
    bundled = {name: common.Case(name, "", c10.val_data, c10.real) for name in ("demo", "cifar_mobilenetv2")}
    return {**bundled, **cases}


def dgh_set(case: common.Case, path: Path) -> Path:
    """The model's DGH set at the job's default budget (plus the images a job holds out), generated
    into ``path`` once: later runs, and other versions of the cache key, reuse the same images."""
    if path.is_file():
        return path
    import dgh_deploy
    from dgh_deploy.generation import default_budget
    from dgh_deploy.loading import load_model
    from dgh_deploy.pipeline import default_holdout

    budget = default_budget(load_model(case.model, case.weights or None, None, case.imgsz), "cpu")
    n_images = case.n_images or budget.n_images
    dgh_deploy.generate(model=case.model, weights=case.weights or None, imgsz=case.imgsz,
                        n_images=n_images + default_holdout(n_images), iters=budget.iters, out=path)
    return path


def run_job(case: common.Case, calib: Path, out: Path, val_limit: int | None, threads: int) -> dict[str, Any]:
    """One ethos-u job on ``case``, calibrated on the set ``calib``: its report."""
    import dgh_deploy

    return dgh_deploy.deploy(target="ethos-u", model=case.model, weights=case.weights or None, imgsz=case.imgsz,
                             calib=str(calib), n_images=case.n_images, val_data=case.val_data, val_limit=val_limit,
                             out=str(out), threads=threads, human_report=False).report.to_json()


def placement_job(model: str, imgsz: int, out: Path, threads: int) -> dict[str, Any]:
    """An ethos-u job on untrained ``model`` at ``imgsz``, noise-calibrated: its report."""
    import dgh_deploy

    return dgh_deploy.deploy(target="ethos-u", model=model, imgsz=imgsz, calib="noise", n_images=16, out=str(out),
                             threads=threads, human_report=False).report.to_json()


def placement_result(report: dict[str, Any], out: Path, configs: list[str], seconds: float) -> dict[str, Any]:
    """What the results file keeps of a placement-only job: the model and Vela per configuration."""
    return {
        "model": report["model"]["name"], "imgsz": report["model"]["imgsz"], "placement_only": True,
        "calibration": {"source": "noise (untrained weights)", "images": report["calibration"]["images"]},
        "int8_bytes": report["artifacts"]["model"]["bytes"],
        "ethos_u": vela_rows(out / report["artifacts"]["model"]["path"], configs),
        "tflite_micro_error": report["target"].get("tflite_micro", {}).get("error"),
        "job_seconds": round(seconds, 1), "times_s": report["times_s"], "machine": common.machine(),
    }


def vela_rows(int8: Path, configs: list[str]) -> list[dict[str, Any]]:
    """The int8 file compiled for each configuration: placement, memory, time."""
    from dgh_deploy.targets.ethos_u.vela import VelaSettings, check_settings, compile_model

    rows = []
    with tempfile.TemporaryDirectory(prefix="edge-vela-") as tmp:
        for spec in configs:
            npu, memory, system = [*spec.split("/"), "", ""][:3]
            settings = VelaSettings(npu, system, memory)
            check_settings(settings)
            r = compile_model(int8, settings, Path(tmp)).report.as_dict()
            rows.append({"config": spec, **{k: r[k] for k in (
                "accelerator", "system_config", "memory_mode", "npu_ops", "cpu_ops", "npu_op_share", "cpu_fallback",
                "sram_kib", "flash_kib", "dram_kib", "sram_capacity_kib", "fits_sram", "inference_ms", "cycles_total",
                "macs", "core_clock_mhz")}})
    return rows


def model_result(report: dict[str, Any], out: Path, configs: list[str], seconds: float) -> dict[str, Any]:
    """What the results file keeps of one job: the model, the runtimes' metrics, Vela per configuration."""
    m, dev = report["metrics"], report["metrics"]["device"]
    metric = m["metric"]
    cal = report["calibration"]
    int8 = out / report["artifacts"]["model"]["path"]
    return {
        "model": report["model"]["name"], "imgsz": report["model"]["imgsz"], "metric": metric,
        "calibration": {"source": cal["source"], "images": cal["images"], "held_out": cal["held_out"],
                        "iters": cal["settings"].get("iters")},
        "int8_bytes": report["artifacts"]["model"]["bytes"],
        "images": int(dev["quantized"]["images"]),
        "float": dev["float"][metric], "litert": dev["desktop"][metric], "tflite_micro": dev["quantized"][metric],
        "litert_all_images": {"images": int(m["quantized"]["images"]), metric: m["quantized"][metric]},
        "agreement": dev["agreement"], "data_free": {"litert": m.get("data_free"), "tflite_micro": dev.get("data_free"),
                                                     "agreement": dev.get("data_free_agreement")},
        "arena_bytes": report["target"]["tflite_micro"].get("arena_bytes"),
        "ethos_u": vela_rows(int8, configs),
        "job_seconds": round(seconds, 1), "times_s": report["times_s"], "machine": common.machine(),
    }


def versions() -> dict[str, str]:
    from dgh_deploy.versions import installed_versions

    return installed_versions(("ethos-u-vela", "tflite-micro", "ai-edge-litert", "onnx2tf", "tensorflow", "torch"))


def main(argv: list[str] | None = None) -> int:
    p = common.BenchParser("edge", __doc__)
    p.add_argument("--models", default=MODELS)
    p.add_argument("--configs", default=CONFIGS, help="NPU[/MEMORY_MODE[/SYSTEM_CONFIG]], comma-separated")
    p.add_argument("--val-limit", type=int, default=VAL_LIMIT, help="classifier test images (spread evenly)")
    p.add_threads()
    p.add_json(str(common.RESULTS / "edge_cpu.json"))
    p.add_argument("--work", default=str(common.WORK / "edge"))
    p.add_argument("--rerun", action="store_true", help="run models the results file already has again")
    args = p.parse(argv)
    models, configs = common.split_list(args.models), common.split_list(args.configs)
    cases = edge_cases(args.assets)
    unknown = [m for m in models if m not in cases and m not in PLACEMENT_ONLY]
    if unknown:
        return p.fail(f"unknown model {', '.join(unknown)} (one of {', '.join([*cases, *PLACEMENT_ONLY])})")
    if rc := p.check_assets(*(f for m in models if m in cases for f in cases[m].files(real=False) if f)):
        return rc
    common.set_threads(args.threads)
    state = common.read_state(args.json, {"models": {}})
    from dgh_deploy.targets.tflite.target import installed_converter

    # The file's machine and versions are its first run's; a model run later records its own.
    state.setdefault("machine", common.machine())
    state.setdefault("versions", versions())
    state["configs"] = configs
    for name in models:
        if name in state["models"] and not args.rerun:
            print(f"{name}: in {args.json} already (--rerun to run it again)")
            continue
        out, t0 = Path(args.work) / name, time.perf_counter()
        if name in PLACEMENT_ONLY:
            report = placement_job(*PLACEMENT_ONLY[name], out, args.threads)
            state["models"][name] = placement_result(report, out, configs, time.perf_counter() - t0)
            common.write_result(args.json, state)
            print(f"{name}: " + "; ".join(f"{e['config']}: {e['npu_ops']}/{e['npu_ops'] + e['cpu_ops']} NPU ops"
                                          for e in state["models"][name]["ethos_u"]))
            continue
        case = cases[name]
        limit = args.val_limit if name != "yolov5n" else None
        report = run_job(case, dgh_set(case, Path(args.work) / f"{name}_dgh.npz"), out, limit, args.threads)
        state["models"][name] = {**model_result(report, out, configs, time.perf_counter() - t0),
                                 "converter": installed_converter(), "versions": versions()}
        common.write_result(args.json, state)
        r = state["models"][name]
        print(f"{name}: {r['metric']} float {r['float']:.2f}, LiteRT {r['litert']:.2f}, TFLite Micro "
              f"{r['tflite_micro']:.2f} on {r['images']} images; " + "; ".join(
                  f"{e['config']}: {e['npu_ops']}/{e['npu_ops'] + e['cpu_ops']} NPU ops, {e['inference_ms']:.2f} ms"
                  for e in r["ethos_u"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
