#!/usr/bin/env bash
# One fold of efficientnet-b0 at 128 px on a 20k-image generated set with AMP: images/s and GPU memory.
# Without a CUDA GPU it says so and runs a tiny CPU fold instead. Extra arguments go to gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
export DO_NOT_TRACK=1 NO_ALBUMENTATIONS_UPDATE=1
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PY" scripts/gpu_check.py "$@"
