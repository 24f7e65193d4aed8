"""Images per second of decode + transform + collate, per source and worker count.

    uv run python bench/data_throughput.py [--images 256] [--workers 0 1 2] [--size 400]
        [--scale-jitter 0.1 2.0] [--photo 4000 3000]
    uv run python bench/data_throughput.py --transport [--batch-size 16]

Writes a temporary COCO-like data set (640x480 JPEGs, as in COCO; `--photo`: another size, a
phone's 4000 x 3000) as hub-schema parquet and as a COCO folder, then times a full pass of a
DataLoader over each source. `--transport` times only what a batch costs to leave a worker
(prepared samples, no decoding): the targets as `Targets` against plain per-image tensors. Not
a test.
"""

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader

from frcnn.data import COCOFolder, HubCOCO, SyntheticShapes, Transform, collate
from frcnn.data.coco_classes import COCO_CLASSES
from frcnn.data.coco_hub import hub_features
from frcnn.structures import Targets


def photo_like_jpeg(rng, width=640, height=480) -> bytes:
    """A smooth random image with noise: compresses about like a photograph."""
    coarse = rng.integers(0, 255, size=(height // 32, width // 32, 3), dtype=np.uint8)
    image = np.asarray(
        Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16
    )
    image = np.clip(image + rng.integers(-20, 21, size=image.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_data(root: Path, num_images: int, num_shards: int, photo=(640, 480)):
    rng = np.random.default_rng(0)
    images = [photo_like_jpeg(rng, *photo) for _ in range(num_images)]
    boxes = [
        [[10.0 * k, 10.0 * k, 10.0 * k + 100, 10.0 * k + 80] for k in range(7)] for _ in images
    ]
    files = []
    for shard in range(num_shards):
        idx = range(shard, num_images, num_shards)
        columns = {
            "image_id": list(idx),
            "image": [{"bytes": images[i], "path": None} for i in idx],
            "width": [photo[0]] * len(idx),
            "height": [photo[1]] * len(idx),
            "objects": [
                {
                    "bbox_id": list(range(7)),
                    "category": list(range(7)),
                    "bbox": boxes[i],
                    "area": [8000] * 7,
                }
                for i in idx
            ],
        }
        path = root / f"train-{shard:05d}.parquet"
        # written by pyarrow with the hub's schema: Dataset.from_dict's fingerprint pickles the
        # table with dill, which failed on the GPU machine's Python 3.12 (MonthDayNano)
        features = hub_features()
        table = pa.Table.from_pydict(features.encode_batch(columns), schema=features.arrow_schema)
        pq.write_table(table, path)
        files.append(str(path))

    (root / "images").mkdir()
    annotations = []
    for i, data in enumerate(images):
        (root / "images" / f"{i}.jpg").write_bytes(data)
        for k, b in enumerate(boxes[i]):
            annotations.append(
                {
                    "id": len(annotations),
                    "image_id": i,
                    "category_id": k + 1,
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                    "iscrowd": 0,
                }
            )
    coco = {
        "images": [{"id": i, "file_name": f"{i}.jpg"} for i in range(num_images)],
        "categories": [{"id": k + 1, "name": COCO_CLASSES[k]} for k in range(80)],
        "annotations": annotations,
    }
    (root / "instances.json").write_text(json.dumps(coco))
    return files, root / "instances.json", root / "images"


def images_per_second(dataset, workers: int, batch_size: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate)
    start, count = None, 0
    for batch in loader:
        if start is None:  # worker start-up and the first batch are not throughput
            start = time.perf_counter()
            continue
        count += len(batch["targets"])
    return count / (time.perf_counter() - start)


def plain_collate(samples):
    """`collate`, with each image's targets as tensors of their own (a plain list)."""
    batch = collate(samples)
    batch["targets"] = [
        {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in t.items()}
        for t in batch["targets"]
    ]
    return batch


def tensors_in(batch) -> int:
    """Tensors that a worker sends (and the pin thread pins, and Lightning copies) per batch."""
    targets = batch["targets"]
    packed = len(targets.padded) if isinstance(targets, Targets) else 0
    rest = targets.unpacked() if isinstance(targets, Targets) else targets
    return 2 + packed + sum(isinstance(v, torch.Tensor) for t in rest for v in t.values())


def transport(batch_size: int, size: int, reps: int = 3) -> None:
    """Batches/s that one worker delivers of prepared samples, plain targets against Targets."""
    data = SyntheticShapes(Transform(size, "letterbox"), batch_size, num_classes=6)
    samples = [data[i] for i in range(batch_size)] * 64
    print(f"one worker, prepared samples ({size} px, batch {batch_size}); batches/s")
    print("| targets | tensors per batch | batches/s |")
    print("| --- | --- | --- |")
    for name, fn in [("plain list of dicts", plain_collate), ("Targets", collate)]:
        loader = DataLoader(samples, batch_size, num_workers=1, collate_fn=fn, prefetch_factor=4)
        rates = []
        for _ in range(reps):
            start, count = None, 0
            for _batch in loader:
                if start is None:  # worker start-up and the first batch are not throughput
                    start = time.perf_counter()
                    continue
                count += 1
            rates.append(count / (time.perf_counter() - start))
        tensors = tensors_in(fn(samples[:batch_size]))
        print(f"| {name} | {tensors} | {min(rates):.0f}-{max(rates):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--scale-jitter", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
        help="training's large-scale jitter (data.scale_jitter), e.g. 0.1 2.0",
    )  # fmt: skip
    parser.add_argument(
        "--photo", type=int, nargs=2, default=(640, 480), metavar=("WIDTH", "HEIGHT"),
        help="the JPEGs' size (COCO's about 640 x 480; a phone's 4000 x 3000)",
    )  # fmt: skip
    parser.add_argument("--transport", action="store_true", help=transport.__doc__)
    args = parser.parse_args()
    if args.transport:
        return transport(args.batch_size, args.size)

    transform = Transform(args.size, "letterbox", flip_prob=0.5, scale_jitter=args.scale_jitter)
    with tempfile.TemporaryDirectory() as tmp:
        files, annotation_file, image_dir = write_data(
            Path(tmp), args.images, max(args.workers + [1]), tuple(args.photo)
        )
        sources = {
            "synthetic": lambda: SyntheticShapes(transform, args.images, num_classes=6),
            "parquet (hub schema)": lambda: HubCOCO(
                transform, split="train", data_files=files, shuffle=False
            ),
            "coco folder": lambda: COCOFolder(transform, str(annotation_file), str(image_dir)),
        }
        jitter = f", scale jitter {args.scale_jitter}" if args.scale_jitter else ""
        print(
            f"{args.images} images of {args.photo[0]} x {args.photo[1]} -> {args.size} px "
            f"letterbox{jitter}, batch {args.batch_size}; images/s"
        )
        header = "| source | " + " | ".join(f"{w} workers" for w in args.workers) + " |"
        print(header)
        print("|" + " --- |" * (len(args.workers) + 1))
        for name, make in sources.items():
            rates = [images_per_second(make(), w, args.batch_size) for w in args.workers]
            print(f"| {name} | " + " | ".join(f"{r:.0f}" for r in rates) + " |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
