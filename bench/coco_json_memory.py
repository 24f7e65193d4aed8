"""Memory of a COCO json source: what one process holds, and what a loader worker copies.

    uv run python bench/coco_json_memory.py [--images 118000] [--annotations 860000]

Writes a json of COCO train2017's size (by default; polygons of 50 numbers, urls and dates
as in the official file, about 490 MB) to a temporary folder, then measures in this process:
the parsed file (what `json.load`, and pycocotools' `COCO`, hold) against a `COCOFolder` of
it, and the private memory a forked process (a DataLoader worker) has after reading every
image's labels once and a garbage collection. Linux only (/proc). Not a test.
"""

import argparse
import gc
import json
import os
import random
import tempfile
import time
from pathlib import Path

from frcnn.data import COCOFolder, Transform


def write_json(path: Path, num_images: int, num_annotations: int) -> None:
    rng = random.Random(0)
    url = "http://images.cocodataset.org/train2017/{:012d}.jpg"
    images = [
        {"license": 1, "file_name": f"{i:012d}.jpg", "coco_url": url.format(i), "height": 480,
         "width": 640, "date_captured": "2013-11-14 11:18:45",
         "flickr_url": "http://farm3.staticflickr.com/2238/1234567890_abcdef.jpg", "id": i}
        for i in range(1, num_images + 1)
    ]  # fmt: skip
    annotations = []
    for a in range(num_annotations):
        w, h = round(rng.uniform(5, 140), 2), round(rng.uniform(5, 80), 2)
        box = [round(rng.uniform(0, 500), 2), round(rng.uniform(0, 400), 2), w, h]
        polygon = [round(rng.uniform(0, 640), 2) for _ in range(50)]
        annotations.append(
            {"segmentation": [polygon], "area": round(w * h * 0.6, 4), "iscrowd": 0,
             "image_id": 1 + a % num_images, "bbox": box, "category_id": 1 + a % 80, "id": a + 1}
        )  # fmt: skip
    categories = [{"supercategory": "thing", "id": c, "name": f"class{c}"} for c in range(1, 81)]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps({"info": {}, "licenses": [], **coco}))


def memory_mb() -> tuple[float, float]:
    """(resident, private) MB of this process."""
    lines = Path("/proc/self/smaps_rollup").read_text().splitlines()[1:]
    fields = {k: int(v.split()[0]) / 1024 for k, v in (line.split(":") for line in lines)}
    return fields["Rss"], fields["Private_Dirty"] + fields["Private_Clean"]


def worker_private_mb(read) -> float:
    """The private MB of a forked child after `read()` and a garbage collection."""
    receive, send = os.pipe()
    if (pid := os.fork()) == 0:
        read()
        gc.collect()
        os.write(send, str(memory_mb()[1]).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    return float(os.read(receive, 64))


def measure(name: str, make, read) -> None:
    """Print the seconds `make()` takes, the resident MB what it makes holds, and the MB a
    forked worker copies while `read(made)` touches every image's annotations."""
    gc.collect()
    before, start = memory_mb()[0], time.perf_counter()
    made = make()
    seconds = time.perf_counter() - start
    gc.collect()
    mb = memory_mb()[0] - before
    worker = worker_private_mb(lambda: read(made)) - worker_private_mb(lambda: None)
    print(f"| {name} | {seconds:.1f} | {mb:.0f} | {worker:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=118_000)
    parser.add_argument("--annotations", type=int, default=860_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        file, image_dir = Path(tmp) / "instances.json", Path(tmp) / "images"
        image_dir.mkdir()
        (image_dir / f"{1:012d}.jpg").touch()  # the start-up check looks for the first images
        write_json(file, args.images, args.annotations)
        size = file.stat().st_size / 2**20
        print(f"{size:.0f} MB json, {args.images} images, {args.annotations} annotations\n")
        print(
            "| held | load s | MB held | MB a worker copies in a pass |\n| --- | --- | --- | --- |"
        )
        measure(
            "the parsed file",
            lambda: json.loads(file.read_text()),
            lambda coco: [annotation.get("bbox") for annotation in coco["annotations"]],
        )
        measure(
            "`COCOFolder`",
            lambda: COCOFolder(Transform(400), str(file), str(image_dir)),
            lambda source: [source.labels(index) for index in range(len(source))],
        )


if __name__ == "__main__":
    main()
