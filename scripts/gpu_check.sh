#!/usr/bin/env bash
# One fold each of efficientnet-b0 and resnet18 at 128 px on 50k generated tiles, bf16: loader vs bare rates,
# the input-path profile and GPU memory. --json reports/gpu_check.json writes the figures that docs/benchmarks.md
# shows (through `lesion docs`); --markdown F writes a standalone report.
# Without a CUDA GPU it says so and runs a tiny CPU fold instead. Extra arguments go to gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export DO_NOT_TRACK=1 NO_ALBUMENTATIONS_UPDATE=1
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PY" scripts/gpu_check.py "$@"
