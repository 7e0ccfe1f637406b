#!/usr/bin/env bash
# The first run on a fresh GPU node: install, float16 training on 1 and 2 GPUs, kill + resume with
# every rank's parameters compared, BERT-base speed; one JSON + markdown report (see scripts/gpu_check.py).
#   bash scripts/gpu_check.sh [--out runs/gpu-check] [--only install,data,train1,train2,resume,speed]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
export MXNET_SAFE_ACCUMULATION=${MXNET_SAFE_ACCUMULATION:-1}  # float32 accumulation in float16 reductions
exec "$PYTHON" scripts/gpu_check.py "$@"
