"""A real non-Ultralytics detector through the detector protocol: Yolo-FastestV2's whole jobs.

Runs the job as a user would (``dgh_deploy.deploy``, the job's default budget and settings) on
``bench/zoo/yolo_fastestv2.py:build`` (the authors' network and COCO weights, from their repository
checked out outside this one), for each target, calibration source and seed, and keeps what each
report says: float and int8 mAP on coco128 val, TFLite Micro's, Vela's placement. The float mAP
through the authors' own decode (``build_with_authors_decode``) is scored first, beside the
protocol's. DGH seeds share generation across targets (the job's cache). Finished jobs are kept in
``--json``: stop and run again to continue.

    .venv/bin/python -m bench.protocol_detector --seeds 0,1,2 --targets tflite-int8,tensorrt-int8
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from bench import common

ZOO = common.REPO / "bench" / "zoo" / "yolo_fastestv2.py"
COCO128 = "coco128/coco128.yaml"


def float_scores(val_data: str) -> dict[str, float]:
    """mAP through the protocol's decode and through the authors' decode, same images, same scorer."""
    from dgh_deploy.loading import load_model
    from dgh_deploy.runtime.base import TorchRunner
    from dgh_deploy.tasks import get_task

    out = {}
    for label, func in (("protocol", "build"), ("authors", "build_with_authors_decode")):
        model = load_model(f"{ZOO}:{func}")
        scores = get_task("detect", model).evaluate(TorchRunner(model.module), model, val_data)
        out.update({f"{label} {k}": float(v) for k, v in scores.items() if k.startswith("mAP")})
    return out


def job(target: str, calib: str, seed: int, val_data: str, threads: int, out: Path) -> dict[str, Any]:
    """One whole job; what its report says, in points."""
    import dgh_deploy

    t0 = time.perf_counter()
    report = dgh_deploy.deploy(model=f"{ZOO}:build", target=target, calib=calib, seed=seed, val_data=val_data,
                               threads=threads, out=str(out), human_report=False, progress=False).report
    m = report.metrics
    row: dict[str, Any] = {"float": m.float_scores["mAP50-95"], "int8": m.quantized["mAP50-95"],
                           "int8 mAP50": m.quantized["mAP50"], "drop": m.drop, "seconds": time.perf_counter() - t0,
                           "stage seconds": report.times_s, "cached set": report.calibration.cached}
    if m.device is not None and m.device.quantized:
        row[m.device.runtime] = m.device.quantized["mAP50-95"]
    npu = report.target.to_json().get("ethos_u")
    if npu:
        row["npu ops"] = f"{npu['npu_ops']} of {npu['npu_ops'] + npu['cpu_ops']}"
        row["vela"] = {k: npu[k] for k in ("accelerator", "inference_ms", "sram_kib", "flash_kib")}
    return row


def run(args: Any) -> dict[str, Any]:
    common.set_threads(args.threads)
    state = common.read_state(args.json, {"jobs": {}})
    state.update(machine=common.machine(), model="Yolo-FastestV2 (dog-qiuqiu, COCO, 352x352)", val_data=COCO128)
    if "float" not in state:
        state["float"] = float_scores(args.val_data)
        common.write_result(args.json, state, indent=1)
    print(f"float: {state['float']}", flush=True)
    calibs = {f"dgh seed {s}": ("dgh", s) for s in common.parse_seeds(args.seeds)}
    if args.real:
        calibs["real"] = (f"real:{args.val_data}", 0)
    for target in common.split_list(args.targets):
        for label, (calib, seed) in calibs.items():
            key = f"{target}|{label}"
            if key in state["jobs"]:
                continue
            row = job(target, calib, seed, args.val_data, args.threads, Path(args.work) / key.replace(" ", "_"))
            state["jobs"][key] = row
            common.write_result(args.json, state, indent=1)
            print(f"{key}: {row}", flush=True)
    return state


def main(argv: list[str] | None = None) -> int:
    ap = common.BenchParser("protocol_detector", __doc__)
    ap.add_seeds()
    ap.add_argument("--targets", default="tflite-int8,tensorrt-int8")
    ap.add_argument("--real", action="store_true", help="also calibrate on coco128's train images (real:)")
    ap.add_threads(2)
    ap.add_asset_argument("--val-data", COCO128, "the data YAML scored (val) and, with --real, calibrated on (train)")
    ap.add_argument("--work", default=str(common.WORK / "protocol_detector"), help="where the jobs write")
    ap.add_json(str(common.RESULTS / "protocol_detector_yolo_fastestv2_cpu.json"),
                help="finished jobs (JSON): a second run continues from them")
    args = ap.parse(argv)
    if rc := ap.check_assets(args.val_data):
        return rc
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
