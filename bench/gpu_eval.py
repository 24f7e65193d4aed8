"""The README's demo on a GPU, and what each precision does to its evaluation: `train.py` as the
README runs it (its time and final mAP), then `eval.py` on its best checkpoint under each
precision on `--images` validation images: mAP and mAP@50 against 32-true's, and the
evaluation's seconds (data, validation and COCO evaluation; no report, no imports). One markdown
table.

    bench/gpu.sh                                        # on the GPU machine: its stage "eval"
    python bench/gpu_eval.py [--images 500] [--out bench/out/gpu-eval.md]
    python bench/gpu_eval.py --images 2 --precisions 32-true --train trainer.max_steps=1 ...
        # the suite's dry run (tests/test_bench.py): size-reducing train.py overrides

Not a test.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu import run_command  # noqa: E402


def timed_command(script: str, overrides: list[str], folder: Path) -> tuple[float, dict]:
    """Seconds the command took in this process, and the metrics of its run (its metrics.json)."""
    start = time.perf_counter()
    run_command(script, [*overrides, f"paths.log_dir={folder}"])
    seconds = time.perf_counter() - start
    (metrics,) = folder.glob("*/runs/*/metrics.json")
    return seconds, json.loads(metrics.read_text())["metrics"]


def best_checkpoint(folder: Path) -> Path:
    """The run's best checkpoint (callbacks/default.yaml: the one that is not last.ckpt)."""
    (best,) = (p for p in folder.glob("train/runs/*/checkpoints/*.ckpt") if p.name != "last.ckpt")
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="validation images per eval")
    parser.add_argument("--precisions", nargs="+", default=["32-true", "16-mixed", "bf16-mixed"])
    parser.add_argument("--train", nargs="*", default=[], help="train.py overrides (the dry run)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/gpu-eval.md"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seconds, demo = timed_command("train.py", args.train, tmp / "train")
        lines = [
            f"{name}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}",
            "",
            f"`train.py` {' '.join(args.train)} (the demo): {seconds:.0f} s, "
            f"val/map {demo['val/map']:.4f}, val/map_50 {demo['val/map_50']:.4f}",
            "",
            f"| eval.py on {args.images} images | val/map | - 32-true | val/map_50 | - 32-true "
            "| seconds |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        checkpoint = best_checkpoint(tmp / "train")
        reference = None
        for i, precision in enumerate(args.precisions):  # (one may come twice: the spread)
            overrides = [f"ckpt_path={checkpoint}", f"precision={precision}", "report=false",
                         f"data.val.num_images={args.images}"]  # fmt: skip
            seconds, metrics = timed_command("eval.py", overrides, tmp / f"{i}-{precision}")
            if precision == "32-true":
                reference = metrics
            differences = [
                "-" if reference is None else f"{metrics[k] - reference[k]:+.4f}"
                for k in ("val/map", "val/map_50")
            ]
            lines.append(
                f"| precision={precision} | {metrics['val/map']:.4f} | {differences[0]} | "
                f"{metrics['val/map_50']:.4f} | {differences[1]} | {seconds:.1f} |"
            )
            print("\n".join(lines), flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
