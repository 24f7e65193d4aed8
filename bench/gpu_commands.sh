#!/usr/bin/env bash
# The README's commands as a user runs them on a GPU machine (no device=: `auto` takes the GPU),
# from the project root, as `python3` where the README says `uv run` (bench/gpu.sh's "commands"
# stage): the quickstart's training, then on its checkpoints the GPU speed switches that the CPU
# suite skips, evaluation (with the report, with test-time flip), prediction (whole images,
# tiles), a look inside, fine-tuning from the checkpoint, the exports (ONNX, INT8 ONNX, pt2) and
# prediction with them. Each command's exit status, seconds and summary (its error's last lines)
# go to the log; a table of them at the end. About 8 minutes on an H200: run it as a stage alone,
#   GPU_BENCH_SECONDS=560 bench/gpu.sh "$OUT" commands
#   bench/gpu_commands.sh [folder for the pictures and files it writes]   # default: $OUT/commands
set -uo pipefail
out="${1:-${OUT:-bench/out}}/commands"
mkdir -p "$out"
photos=$(mktemp -d)
summary=()

run() {  # run SECONDS SCRIPT ARGS...: the command, its status and time
    local limit=$1 start=$SECONDS status
    shift
    echo "== python3 $*"
    timeout "$limit" python3 "$@" > "$out/last.log" 2>&1
    status=$?
    # what it printed at its end: the summary's lines, or the error
    if ((status == 0)); then
        grep -E "finished|^  val/map(_50)? |detections? ->|Wrote |int8 costs" "$out/last.log"
    else
        tail -n 15 "$out/last.log"
    fi
    summary+=("| \`python3 $*\` | $status | $((SECONDS - start)) |")
    echo "== exit $status after $((SECONDS - start)) s"
    return $status
}

# pictures to predict on: 8 validation-like scenes, and one 2400 x 1600 canvas of 24 small ones
python3 - "$photos" <<'EOF'
import sys
from PIL import Image
from frcnn.data.synthetic import draw_sample

folder = sys.argv[1]
for index in range(8):
    draw_sample(7, index, 6).image.save(f"{folder}/scene{index}.jpg")
canvas = Image.new("RGB", (2400, 1600), (100, 100, 100))
for index in range(24):
    scene = draw_sample(8, index, 6).image
    canvas.paste(scene, (400 * (index % 6), 400 * (index // 6)))
canvas.save(f"{folder}/large.jpg")
EOF

start=$SECONDS
run 300 train.py || { echo "the quickstart failed: nothing else to run"; exit 1; }
echo "quickstart: $((SECONDS - start)) s from the command to its summary"
run_dir=$(ls -d logs/train/runs/* | tail -n 1)
last="$run_dir/checkpoints/last.ckpt"
best=$(ls "$run_dir"/checkpoints/epoch*.ckpt | tail -n 1)

# the GPU speed switches first: the CPU suite skips them (minutes of compiling there)
run 300 train.py module.channels_last=true module.compile=true trainer.max_epochs=1
run 300 train.py module.compile=cudagraphs trainer.max_epochs=1

run 120 eval.py ckpt_path="$last"
run 120 eval.py ckpt_path="$last" model.tta=flip
run 120 eval.py ckpt_path="$best" report=true
run 120 predict.py ckpt_path="$last" input="$photos/" output="$out/predicted"
run 120 predict.py ckpt_path="$last" input="$photos/" tile=640 tile_overlap=0.2 \
    output="$out/predicted_tiles"
run 120 visualize.py what=anchors ckpt_path="$last" level=1 index=3
run 200 train.py init_weights="$last" trainer.max_epochs=1
run 120 export.py ckpt_path="$last" output="$out/model.onnx"
run 120 predict.py backend=onnxruntime model_file="$out/model.onnx" input="$photos/" \
    output="$out/predicted_onnx"
run 240 export.py ckpt_path="$last" quantize=int8 output="$out/model.int8.onnx"
run 240 export.py ckpt_path="$last" format=pt2 output="$out/model.pt2"
run 120 predict.py backend=pt2 model_file="$out/model.pt2" input="$photos/" \
    output="$out/predicted_pt2"

rm -f "$out"/model.* "$out/last.log"
echo
echo "| command | exit | seconds |"
echo "| --- | --- | --- |"
printf '%s\n' "${summary[@]}"
