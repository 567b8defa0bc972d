"""Building the TensorRT engine: here when tensorrt and a GPU are present, else the exact commands.

Two generations are served from the same CPU scales:

* TensorRT 10 and 11, explicit quantization: the Q/DQ model, strongly typed (TensorRT 11
  knows nothing else; NVIDIA recommends it from 10 on). No precision flags: the Q/DQ nodes say
  what runs in int8.
* TensorRT <= 10, implicit quantization: the float model with ``--int8`` and the calibration
  cache, which TensorRT reads instead of calibrating (deprecated in 10.1, removed in 11).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from dgh_deploy.artifacts import atomic_path

EXPLICIT_ENGINE = "model_qdq.engine"
IMPLICIT_ENGINE = "model_implicit.engine"


@dataclass(frozen=True)
class EngineInputs:
    qdq: str  # file names, relative to the output folder (the script runs there)
    float_model: str
    cache: str
    input_name: str
    shape: tuple[int, ...]  # the engine's input shape, batch first
    static: bool = False  # the ONNX models fix their batch (a model that traces its batch size): no --shapes


def build_commands(e: EngineInputs) -> list[str]:
    """[trtexec explicit, polygraphy explicit, trtexec implicit, polygraphy implicit]."""
    dims = "x".join(str(d) for d in e.shape)
    poly = f"{e.input_name}:[{','.join(str(d) for d in e.shape)}]"
    # A static model takes no shapes (trtexec refuses them); the others get the one the engine is built for.
    shapes = "" if e.static else f" --shapes={e.input_name}:{dims}"
    poly_shapes = "" if e.static else f" --trt-min-shapes {poly} --trt-opt-shapes {poly} --trt-max-shapes {poly}"
    return [
        f"trtexec --onnx={e.qdq} --stronglyTyped{shapes} --saveEngine={EXPLICIT_ENGINE}",
        f"polygraphy convert {e.qdq} --strongly-typed{poly_shapes} -o {EXPLICIT_ENGINE}",
        f"trtexec --onnx={e.float_model} --int8 --calib={e.cache}{shapes} --saveEngine={IMPLICIT_ENGINE}",
        f"polygraphy convert {e.float_model} --int8 --calibration-cache {e.cache}{poly_shapes} -o {IMPLICIT_ENGINE}",
    ]


def write_build_script(path: Path, e: EngineInputs, commands: list[str], about: str) -> Path:
    """``build_engine.sh``: explicit by default, ``MODE=implicit`` for TensorRT <= 10's cache path."""
    trtexec_explicit, poly_explicit, trtexec_implicit, poly_implicit = commands
    dims = "x".join(str(d) for d in e.shape)
    batch_note = (f"The ONNX models fix their input at {dims} (the model traces its batch size)." if e.static else
                  f"The ONNX models take any batch; the engine is built for {dims}. For another batch B, change\n"
                  "# --shapes (or give --minShapes/--optShapes/--maxShapes).")
    shapes = "" if e.static else f" --shapes={e.input_name}:{dims}"
    text = f"""#!/usr/bin/env bash
# Build the TensorRT INT8 engine on a machine with an NVIDIA GPU and TensorRT (written by dgh-deploy).
# {about}
#
#   TensorRT 10 and 11 (explicit Q/DQ, strongly typed):        ./build_engine.sh
#   TensorRT <= 10 (implicit INT8, scales from {e.cache}):  MODE=implicit ./build_engine.sh
#   TensorRT 8.6 (Q/DQ model, weakly typed):                    MODE=trt8 ./build_engine.sh
#
# {batch_note} In the build log of the implicit path,
# "Missing scale and zero-point for tensor" names tensors the cache does not cover (TensorRT-internal
# tensors): those layers fall back to higher precision. The cache's header carries the TensorRT
# version it was written for; TensorRT may ignore a cache from another version and calibrate anew.
#
# Polygraphy equivalents:
#   {poly_explicit}
#   {poly_implicit}
set -euo pipefail
cd "$(dirname "$0")"
case "${{MODE:-explicit}}" in
  explicit) {trtexec_explicit} ;;
  implicit) {trtexec_implicit} ;;
  trt8) trtexec --onnx={e.qdq} --int8{shapes} --saveEngine={EXPLICIT_ENGINE} ;;
  *) echo "MODE must be explicit, implicit or trt8" >&2; exit 2 ;;
esac
"""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
        os.chmod(tmp, 0o755)
    return path


def can_build_here() -> bool:
    """True when tensorrt is installed and a CUDA GPU is visible (checked without importing tensorrt)."""
    if importlib.util.find_spec("tensorrt") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def build_engine(qdq_path: Path, engine_path: Path, input_name: str, shape: tuple[int, ...]) -> Path:
    """Build the explicit-quantization engine from the Q/DQ model with Polygraphy (needs tensorrt + GPU)."""
    from dgh_deploy.targets.tensorrt.implicit import import_tensorrt

    trt = import_tensorrt()
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, SaveEngine

    # Strong typing arrived in 9.x and is the only mode of 11; 8.x builds Q/DQ graphs with the INT8 flag.
    strongly = int(str(trt.__version__).split(".")[0]) >= 10
    profile = Profile().add(input_name, min=shape, opt=shape, max=shape)
    config = CreateConfig(profiles=[profile]) if strongly else CreateConfig(int8=True, profiles=[profile])
    network = NetworkFromOnnxPath(str(qdq_path), strongly_typed=True if strongly else None)
    with atomic_path(engine_path) as tmp:
        SaveEngine(EngineFromNetwork(network, config=config), path=str(tmp))()
    return engine_path
