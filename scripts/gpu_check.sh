#!/usr/bin/env bash
# The GPU path in one command: environment, training speed at the paper's size, a job
# through the real `train`, accuracy on the GPU against the CPU (scripts/gpu_check.py).
#   scripts/gpu_check.sh           on a GPU machine, at most 8 minutes: docs/gpu_check.md
#   scripts/gpu_check.sh --smoke   anywhere, tiny, on the CPU (make test runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
exec timeout 480 "$PYTHON" scripts/gpu_check.py "$@"
