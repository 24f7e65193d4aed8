"""Data for the fine-tuning bench: synthetic shapes of 9 classes as a user's COCO json, to
fine-tune the demo's 6-class checkpoint on (bench/README.md, "Fine-tuning").

    uv run python bench/finetune_data.py DIR

DIR/images: 200 training images (seed 5) and 100 validation images (seed 6) with shapes of 9
classes, 6 of them the demo's; two annotation files for each split over them:

- shared_{train,val}.json: the classes under their own names, in reverse order (labels 1..9
  are "yellow triangle" .. "red rectangle"): the demo's 6 are carried over by name to their
  new labels;
- renamed_{train,val}.json: the same boxes, every class renamed ("class 1" ..): nothing to
  carry by name, the predictor's rows start as initialised.

Not a test; the figures and commands are in bench/README.md.
"""

import json
import sys
from pathlib import Path

from frcnn.data.synthetic import class_names, draw_sample

NUM_CLASSES = 9
SPLITS = {"train": (5, 200), "val": (6, 100)}  # seed, images


def main(root: Path) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    names = class_names(NUM_CLASSES)
    lists = {
        # category id 10 * (10 - label): id order, and so label order, reversed
        "shared": {label: (10 * (10 - label), name) for label, name in enumerate(names, 1)},
        "renamed": {label: (label, f"class {label}") for label in range(1, NUM_CLASSES + 1)},
    }
    for split, (seed, count) in SPLITS.items():
        images, objects = [], []  # objects: (image id, xywh box, label)
        for i in range(count):
            record = draw_sample(seed, i, NUM_CLASSES)
            name = f"{split}_{i:04d}.png"
            record.image.save(root / "images" / name)
            width, height = record.image.size
            images.append({"id": i, "file_name": name, "width": width, "height": height})
            for (x0, y0, x1, y1), label in zip(record.boxes.tolist(), record.labels, strict=True):
                objects.append((i, [x0, y0, x1 - x0, y1 - y0], int(label)))
        for variant, categories in lists.items():
            annotations = [
                {"id": n, "image_id": i, "bbox": box, "area": box[2] * box[3], "iscrowd": 0,
                 "category_id": categories[label][0]}
                for n, (i, box, label) in enumerate(objects, 1)
            ]  # fmt: skip
            coco = {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": cid, "name": name} for cid, name in categories.values()],
            }
            (root / f"{variant}_{split}.json").write_text(json.dumps(coco))
    print(f"wrote {root}: {', '.join(f'{s} {n}' for s, (_, n) in SPLITS.items())} images")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
