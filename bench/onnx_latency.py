"""Inference latency on the CPU: the exported ONNX graph in onnxruntime against the PyTorch model.

    uv run python bench/onnx_latency.py --ckpt logs/train/runs/<run>/checkpoints/last.ckpt
    uv run python bench/onnx_latency.py --depth 50 --size 400 --classes 80   # random weights

The same letterboxed batches (synthetic images of 240-640 px) go through both: PyTorch's
`model(images, image_sizes=...)` (what `Predictor` runs, detections as per-image lists) and the
ONNX file `export.py` writes, run by onnxruntime's CPU provider. Both use all cores by default.
Before timing, the export check confirms the two return the same detections. Medians of
`--reps` runs after one warm-up, per image. Not a test.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime
import torch

from frcnn.data.synthetic import draw_sample
from frcnn.inference.detector_graph import check, metadata
from frcnn.inference.onnx_graph import export_onnx, load, run_onnx
from frcnn.inference.predictor import Predictor
from frcnn.model import FasterRCNN


def median_ms(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", help="a training checkpoint; without it, random weights")
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()

    if args.ckpt:
        predictor = Predictor.from_checkpoint(args.ckpt, "cpu")
        model, size = predictor.model, predictor.transform.size
        name = f"checkpoint {args.ckpt}"
    else:
        torch.manual_seed(0)
        model = FasterRCNN(args.classes, backbone={"depth": args.depth, "weights": None})
        size = args.size
        name = f"ResNet-{args.depth}-FPN, random weights, {args.classes} classes"
    model.eval()
    num_classes = min(model.roi_heads.num_classes, 24)
    photos = [draw_sample(1, i, num_classes, 240, 640).image for i in range(max(args.batch_sizes))]
    images, sizes, _ = Predictor(model, size, device="cpu").batch(photos)

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(model, path, size, 17, metadata(size, "letterbox", None, None))
        reports = check(load(path)[0], model, images, sizes)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        print(
            f"{name}, {size} px; torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"onnxruntime {onnxruntime.__version__}; same detections: "
            f"{'yes' if all(r['ok'] for r in reports) else 'NO'} "
            f"({sum(r['count'] for r in reports if r['batch'] == 1)} on the first image)"
        )
        print("| batch | PyTorch (ms/image) | onnxruntime (ms/image) | onnxruntime / PyTorch |")
        print("| --- | --- | --- | --- |")
        for batch in args.batch_sizes:
            x, s = images[:batch], sizes[:batch]
            with torch.no_grad():
                ours = median_ms(lambda x=x, s=s: model(x, image_sizes=s), args.reps) / batch
            ort = median_ms(lambda x=x, s=s: run_onnx(session, x, s), args.reps) / batch
            print(f"| {batch} | {ours:.1f} | {ort:.1f} | {ort / ours:.2f} |")


if __name__ == "__main__":
    main()
