#!/usr/bin/env bash
# The GPU measurement of bench/README.md, on the offline GPU machine of shared/gpu/README.md
# (from the project root, with .whl/ filled by `shared/gpu/fetch-wheels.sh --with-pyarrow`):
#   bench/gpu.sh [output folder] [stage ...]   # default: $OUT, else bench/out; every stage
# Stages, each logged to <folder>/<stage>.log, each within its share of GPU_BENCH_SECONDS (540)
# and none stopped by an earlier one's failure, slowest last: env; data (the loader at 8 and 16
# workers); inference (this detector's train and inference time against torchvision's, batch
# 16); eval (the demo trained on the GPU and evaluated under each precision: gpu-eval.md);
# switches (the switches' table and the train.py loop: gpu.md); cuda-tests; profile (the stage
# breakdown and top kernels of a train step); commands (the README's commands on the GPU:
# bench/gpu_commands.sh); compiled (the compiled scopes: gpu-compiled.md).
set -uo pipefail
out="${1:-${OUT:-bench/out}}"
shift
only=" $* "  # the stages asked for; none: all
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD/src:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
end=$((SECONDS + ${GPU_BENCH_SECONDS:-540}))

stage() {  # stage NAME SECONDS COMMAND...: at most SECONDS, or what the budget has left
    local name=$1 limit=$2 left=$((end - SECONDS))
    shift 2
    [[ $only == "  " || $only == *" $name "* ]] || return
    ((limit > left)) && limit=$left
    ((limit > 0)) || { echo "== $name: no time left"; return; }
    echo "== $name (at most $limit s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS)) s"
}

stage env 30 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv &&
    python3 -c "import torch, torchvision, lightning, datasets, hydra, frcnn.app
print(torch.__version__, torchvision.__version__, lightning.__version__, datasets.__version__)"'
stage data 70 python3 bench/data_throughput.py --images 1024 --workers 8 16 --batch-size 16
stage inference 90 python3 bench/detector.py --device cuda --batch-size 16 \
    --precision 16-mixed --sizes 400 --nms-calls triton
stage eval 150 python3 bench/gpu_eval.py --images 500 --out "$out/gpu-eval.md"
stage switches 300 python3 bench/gpu.py --device cuda --out "$out/gpu.md"
stage cuda-tests 60 python3 -m pytest -q -p no:cacheprovider -n 0 \
    -k "(cuda or gpu or precision or triton or compiled) and not slurm" \
    tests/model/test_poolers.py tests/model/test_faster_rcnn.py tests/test_nms_kernel.py \
    tests/app/test_configs.py tests/training/test_module.py
stage profile 60 python3 bench/detector.py --device cuda --batch-size 16 --precision 16-mixed \
    --sizes 400 --breakdown --profile --nms-calls triton
stage commands 560 bench/gpu_commands.sh "$out"
stage compiled 600 python3 bench/gpu.py --device cuda --compile --precisions 16-mixed \
    --loop-steps 0 --out "$out/gpu-compiled.md"
