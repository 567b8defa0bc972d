#!/usr/bin/env bash
# Set up a venv in the repo (once) with every target's dependencies. Idempotent: a second run
# only checks that the package is installed. Needs Python 3.11 (or 3.12) and a package registry.
#
#   ./install.sh            .venv: tflite-int8 with litert-torch + ai-edge-quantizer (no TensorFlow), the default
#   ./install.sh --onnx2tf  .venv-onnx2tf: tflite-int8 with onnx2tf (TensorFlow's converter)
#
# The two converter stacks cannot share a venv (onnx2tf pins ai-edge-litert 2.1 and protobuf 4;
# ai-edge-quantizer needs ai-edge-litert 2.3); everything else (tensorrt-int8, sim, ethos-u, the
# tests) is in both.
set -euo pipefail
cd "$(dirname "$0")"
venv=.venv
extras=all
case "${1:-}" in
  "") ;;
  --onnx2tf) venv=.venv-onnx2tf; extras=all-onnx2tf ;;
  *) echo "usage: $0 [--onnx2tf]" >&2; exit 2 ;;
esac
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x "$venv/bin/python" ]; then
  "$PY" -m venv "$venv"
fi
stamp=$venv/.dgh-deploy-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # torch first, on its own: pip then takes the local wheels instead of resolving a CUDA build.
  "$venv/bin/python" -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
  "$venv/bin/python" -m pip install --quiet -e ".[$extras]"
  touch "$stamp"
fi
