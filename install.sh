#!/usr/bin/env bash
# Set up .venv in the repo (once) with every target's dependencies. Idempotent: a second run
# only checks that the package is installed. Needs Python 3.11 and a package registry.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.dgh-deploy-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch first, on its own: pip then takes the local wheels instead of resolving a CUDA build.
  .venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install --quiet -e ".[all]"
  touch "$stamp"
fi
