"""Tiny data sets written by the tests: a COCO folder and hub-schema parquet shards."""

import io
import json

import pytest
from PIL import Image

from frcnn.data.coco_hub import hub_features


def jpeg_bytes(width, height, colour=(120, 60, 30), mode="RGB"):
    buffer = io.BytesIO()
    Image.new(mode, (width, height), colour if mode == "RGB" else 128).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def coco_folder(tmp_path):
    """4 images: 1 with two objects and a crowd, 2 with one object, 3 with none, 4 corrupt."""
    images = tmp_path / "val2017"
    images.mkdir()
    (images / "1.jpg").write_bytes(jpeg_bytes(200, 100))
    (images / "2.jpg").write_bytes(jpeg_bytes(80, 160))
    (images / "3.jpg").write_bytes(jpeg_bytes(50, 50))
    (images / "4.jpg").write_bytes(jpeg_bytes(50, 50)[:100])  # truncated
    coco = {
        "images": [
            {"id": i, "file_name": f"{i}.jpg", "width": 0, "height": 0} for i in (1, 2, 3, 4)
        ],
        "categories": [
            {"id": 90, "name": "toothbrush"},
            {"id": 1, "name": "person"},
            {"id": 18, "name": "dog"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 18, "bbox": [10, 20, 30, 40], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 90, "bbox": [100, 10, 50, 50], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 0, 200, 100], "iscrowd": 1},
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 0},
            {"id": 5, "image_id": 4, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 0},
        ],
    }
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    (annotations / "instances_val2017.json").write_text(json.dumps(coco))
    return tmp_path


def hub_row(image_id, width, height, boxes, categories, image=None):
    return {
        "image_id": image_id,
        "image": {"bytes": image if image is not None else jpeg_bytes(width, height), "path": None},
        "width": width,
        "height": height,
        "objects": {
            "bbox_id": list(range(len(boxes))),
            "category": categories,
            "bbox": boxes,
            "area": [int((b[2] - b[0]) * (b[3] - b[1])) for b in boxes],
        },
    }


def hub_dataset(rows):
    """`hub_row` dicts -> a `datasets.Dataset` with the hub's features."""
    from datasets import Dataset

    columns = {key: [row[key] for row in rows] for key in rows[0]}
    return Dataset.from_dict(columns, features=hub_features())


def write_hub_parquet(path, rows, **to_parquet) -> str:
    """Write `hub_row` dicts as one hub-schema parquet file; returns its path."""
    hub_dataset(rows).to_parquet(str(path), **to_parquet)
    return str(path)


def stop_workers(loader) -> None:
    """Stop a DataLoader's persistent workers now, as Lightning does at the end of a run.
    Where the collector frees a loader held in a reference cycle (as a test's leftovers often
    are on Python 3.13), it closes each worker's queue before the loader can tell the worker to
    stop, and each waits out torch's 5 s time-out (in a later test's time)."""
    loader._iterator._shutdown_workers()


@pytest.fixture
def hub_parquet(tmp_path):
    """Two parquet shards of 6 images each, ids 0..11; image i is 100x200 with one box."""
    paths = []
    for shard in range(2):
        rows = [
            hub_row(i, 200, 100, [[10.0, 20.0, 50.0, 60.0]], [i % 80])
            for i in range(shard * 6, shard * 6 + 6)
        ]
        paths.append(write_hub_parquet(tmp_path / f"train-{shard:05d}-of-00002.parquet", rows))
    return paths


@pytest.fixture
def bad_parquet(tmp_path):
    """One shard with a truncated JPEG, an inverted box, no objects and a greyscale image."""
    rows = [
        hub_row(1, 64, 64, [[1.0, 1.0, 20.0, 20.0]], [0], image=jpeg_bytes(64, 64)[:200]),
        hub_row(2, 64, 64, [[30.0, 5.0, 10.0, 40.0], [5.0, 5.0, 30.0, 30.0]], [1, 2]),
        hub_row(3, 64, 64, [], []),
        hub_row(4, 64, 64, [[2.0, 2.0, 40.0, 40.0]], [5], image=jpeg_bytes(64, 64, mode="L")),
    ]
    return [write_hub_parquet(tmp_path / "bad.parquet", rows)]


CPPE5 = ["Coverall", "Face_Shield", "Gloves", "Goggles", "Mask"]


def cppe5_features(category=None, image_id=None, crowds=False):
    """cppe-5's (and the RF100 `Francesco/*` sets') features: objects{id, area, bbox, category}
    with xywh pixel boxes; `category` another feature than its ClassLabel, `image_id` another
    than its int64; `crowds`: the objects have COCO's `iscrowd` flag too (True: a bool, or the
    feature it is)."""
    from datasets import ClassLabel, Features, Image, List, Value

    objects = {
        "id": Value("int64"),
        "area": Value("int64"),
        "bbox": List(Value("float32"), length=4),
        "category": category or ClassLabel(names=CPPE5),
        **({"iscrowd": Value("bool") if crowds is True else crowds} if crowds else {}),
    }
    columns = {"image_id": image_id or Value("int64"), "image": Image(), "width": Value("int32")}
    return Features({**columns, "height": Value("int32"), "objects": List(objects)})


def cppe5_parquet(path, boxes_per_image, width=200, height=100, category=None, ids=None) -> str:
    """One image per entry of `boxes_per_image` [(x, y, w, h, class), ...] (a sixth value: the
    object's `iscrowd` flag, a bool or a string); their ids 0, 1, ... or the strings `ids`."""
    from datasets import Dataset, Value

    rows = {"image_id": [], "image": [], "width": [], "height": [], "objects": []}
    for image_id, boxes in enumerate(boxes_per_image):
        rows["image_id"].append(ids[image_id] if ids else image_id)
        rows["image"].append({"bytes": jpeg_bytes(width, height), "path": None})
        rows["width"].append(width)
        rows["height"].append(height)
        objects = [
            {"id": i, "area": int(w * h), "bbox": [x, y, w, h], "category": c}
            | ({"iscrowd": flag[0]} if flag else {})
            for i, (x, y, w, h, c, *flag) in enumerate(boxes)
        ]
        rows["objects"].append(objects)
    flags = [box[5] for boxes in boxes_per_image for box in boxes if len(box) == 6]
    crowds = bool(flags) and (Value("string") if isinstance(flags[0], str) else True)
    features = cppe5_features(category, Value("string") if ids else None, crowds)
    Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return str(path)
