#!/usr/bin/env bash
# The GPU measurement of bench/README.md, on the offline GPU machine of shared/gpu/README.md
# (from the project root, with .whl/ filled by shared/gpu/fetch-wheels.sh):
#   bench/gpu.sh [output folder]        # default: $OUT, else bench/out
# writes gpu.md (the table) and gpu.log there; under 8 minutes on an H100/H200.
set -euo pipefail
out="${1:-${OUT:-bench/out}}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD/src:$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.log"
timeout 470 python3 bench/gpu.py --device cuda --out "$out/gpu.md" --compile 2>&1 | tee -a "$out/gpu.log"
