"""The GPU measurement: train throughput of this detector under each speed switch and of
torchvision's fasterrcnn_resnet50_fpn, host syncs per step, peak memory, and a whole train.py
loop; one markdown table.

    bench/gpu.sh                                   # on the GPU machine (installs the wheels)
    python bench/gpu.py --device cuda [--out bench/out/gpu.md] [--size 400] [--batch 16]
    python bench/gpu.py --device cpu --size 64 --batch 2 --steps 1 --warmup 0 --depth 18 \\
        --precisions 32-true --loop-steps 2         # the dry run of the suite (tests/test_bench.py)

Rows: this detector with NMS called per image (`model.nms_calls=image`; `auto`, the default,
takes triton on a GPU) and `model.roi_heads.pooler=own`, then one switch changed at a time
(nms_calls=batch, nms_calls=triton, pooler=torchvision,
channels-last, and with `--compile` each `module.compile_scope`: the backbone and FPN, then
every fixed-shape part),
and torchvision's detector with the same weights and settings (bench/detector.py:
ResNet-50-FPN, stem..layer3 frozen, 81 classes), in 16-mixed and bf16-mixed. A train step
is forward + backward + SGD step on the same synthetic batch; img/s over `--steps` steps
after `--warmup`; syncs: CUDA's sync debug mode over one step; memory: the peak allocated
over the timed steps. Then `train.py` itself for
`--loop-steps` steps on synthetic data at the same size, batch and precision: its logged
train/images_per_s (data loading, Lightning's loop, logging and all: `experiment=coco400` on
synthetic data) against the detector-only figure of the same setting, once per
`--loop-nms-calls` (default: coco400's triton). Not a test.
"""

import argparse
import json
import runpy
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
from detector import (  # noqa: E402
    AUTOCAST_DTYPES,
    build_pair,
    cuda_syncs,
    make_steps,
    synchronize,
    synthetic_batch,
    use_nms_calls,
)

from frcnn.training.module import COMPILE_SCOPES, compile_parts  # noqa: E402

ROOT = Path(__file__).parents[1]


def variants(ours, compile_: bool):
    """(name, set-up) of this detector's switches, one changed at a time from the first."""

    def switch(nms_calls="image", pooler="own"):
        use_nms_calls(ours, nms_calls)
        ours.roi_heads.pooler = pooler

    yield "ours, nms_calls=image", lambda: switch()
    yield "ours, nms_calls=batch", lambda: switch(nms_calls="batch")
    yield "ours, nms_calls=triton", lambda: switch(nms_calls="triton")
    yield "ours, pooler=torchvision", lambda: switch(pooler="torchvision")
    yield "ours, channels-last", lambda: switch()
    if compile_:  # compiled in place: the last rows
        for scope in COMPILE_SCOPES:
            yield f"ours, compile_scope={scope}", lambda: switch()


def measure(step, args, device) -> tuple[float, list[str] | None, float | None]:
    """img/s, the host syncs of one step (CUDA: where each was called), peak memory in GB
    (CUDA)."""
    for _ in range(args.warmup):
        step()
    syncs = cuda_syncs(step) if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    rate = args.batch * args.steps / (time.perf_counter() - start)
    memory = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None
    return rate, syncs, memory


def detector_rows(args, device, precision) -> list[tuple]:
    rows = []
    images, targets = synthetic_batch(args.batch, args.size, device)
    ours, tv = build_pair(args.size, device, args.depth)
    for name, set_up in variants(ours, args.compile):
        set_up()
        model = ours
        channels_last = name.endswith("channels-last")
        if channels_last:
            model = ours.to(memory_format=torch.channels_last)
        if name.startswith("ours, compile_scope="):
            compile_parts(model, "inductor", name.split("=")[1])
        train_step, _ = make_steps(model, False, images, targets, device, precision, channels_last)
        rows.append((name, precision, *measure(train_step, args, device)))
        ours.to(memory_format=torch.contiguous_format)
    train_step, _ = make_steps(tv, True, images, targets, device, precision, False)
    rows.append(("torchvision", precision, *measure(train_step, args, device)))
    return rows


def train_loop(args, precision, nms_calls: str, folder: Path) -> float:
    """`train.py experiment=coco400` (its progress bar, logging and checkpoints) on synthetic
    data for `--loop-steps` steps: its epoch-mean train/images_per_s."""
    overrides = [
        "experiment=coco400",
        "data=synthetic",
        "~data.val.limit",  # (the hub's setting)
        "model.backbone.weights=null",
        f"model.backbone.depth={args.depth}",
        f"model.nms_calls={nms_calls}",
        f"precision={precision}",
        f"device={'gpu' if args.device == 'cuda' else 'cpu'}",
        f"data.image_size={args.size}",
        f"data.batch_size={args.batch}",
        f"data.train.num_images={args.batch * args.loop_steps}",
        "data.val.num_images=2",
        f"data.num_workers={args.workers}",
        f"trainer.max_steps={args.loop_steps}",
        "trainer.limit_val_batches=1",
        "report=false",  # written after the loop, not measured: device time spared
        "logger=csv",
        f"paths.log_dir={folder}",
    ]
    run_command("train.py", overrides)
    (metrics,) = folder.glob("train/runs/*/metrics.json")
    return json.loads(metrics.read_text())["metrics"]["train/images_per_s"]


def run_command(script: str, overrides: list[str]) -> None:
    """One of the project's commands (`train.py`, `eval.py`) with these overrides, run in this
    process: what is measured is the command's own code, without a new process's imports."""
    argv, sys.argv = sys.argv, [str(ROOT / script), *overrides]
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    except SystemExit as end:
        if end.code:
            raise
    finally:
        sys.argv = argv


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--depth", type=int, default=50, choices=[18, 50])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--precisions", nargs="+", default=["16-mixed", "bf16-mixed"], choices=list(AUTOCAST_DTYPES)
    )
    parser.add_argument("--compile", action="store_true", help="also the compiled variant")
    parser.add_argument("--loop-steps", type=int, default=300, help="0: no train.py loop")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--loop-nms-calls", nargs="+", default=["triton"], help="a loop for each (coco400's)"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/out/gpu.md"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda":  # as train.py runs there (trainer.benchmark, TF32)
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    lines = [
        f"{name}; torch {torch.__version__}, torchvision {torchvision.__version__}; "
        f"{args.size} px, batch {args.batch}, ResNet-{args.depth}-FPN; "
        f"{time.strftime('%Y-%m-%d')}",
        "",
        "| detector | precision | train img/s | x torchvision | host syncs / step | "
        "peak memory (GB) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    detector_only = {}  # (precision, nms_calls): img/s
    for precision in args.precisions:
        rows = detector_rows(args, device, precision)
        reference = rows[-1][2]
        for detector, _, rate, _, _ in rows:
            if detector.startswith("ours, nms_calls="):
                detector_only[precision, detector.partition("=")[2]] = rate
        for detector, _, rate, syncs, memory in rows:
            memory = "-" if memory is None else f"{memory:.1f}"
            lines.append(
                f"| {detector} | {precision} | {rate:.0f} | {rate / reference:.2f} | "
                f"{'-' if syncs is None else len(syncs)} | {memory} |"
            )
            if syncs:  # the log says where each wait comes from
                print(f"{detector}, {precision}: host syncs {dict(Counter(syncs))}")
        print("\n".join(lines), flush=True)
    if args.loop_steps:
        lines += ["", "| train.py loop | precision | img/s | x detector-only (same nms_calls) |",
                  "| --- | --- | --- | --- |"]  # fmt: skip
    for precision in args.precisions if args.loop_steps else []:
        for nms_calls in args.loop_nms_calls:
            with tempfile.TemporaryDirectory() as folder:  # the run's logs and checkpoints
                rate = train_loop(args, precision, nms_calls, Path(folder))
            lines.append(
                f"| {args.loop_steps} steps, synthetic, nms_calls={nms_calls} | {precision} | "
                f"{rate:.0f} | {rate / detector_only[precision, nms_calls]:.2f} |"
            )
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
