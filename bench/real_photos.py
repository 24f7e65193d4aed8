"""16 real photos as a small COCO folder: does a training recipe stay stable on real images?

    uv run --with scikit-image --with scikit-learn python bench/real_photos.py data/photos
    COCO_ROOT=data/photos uv run train.py data=coco_files \\
        data.val.annotation_file=data/photos/annotations/instances_train2017.json \\
        data.val.image_dir=data/photos/train2017 data.num_workers=0 \\
        data.persistent_workers=false trainer.max_epochs=120 \\
        trainer.check_val_every_n_epoch=40 device=cpu [seed=1] [recipe]

recipe: nothing for the defaults; the old one that diverges: `lr_base_batch=null
module.optimizer.lr=0.02 trainer.gradient_clip_val=null module.scheduler.warmup_steps=20`.

The photos are those that ship inside the scikit-image and scikit-learn wheels and matplotlib's
sample data (a person, a cat, a cup, a motorcycle, coins, ...), 12 of them with hand-drawn boxes
(40 objects, 12 classes) plus mirrored copies of 4, so 16 images, all annotated: two batches of
8. The category list is padded to COCO's 80, so the box predictor has COCO's size. Real image
statistics from PyPI packages alone (no data set download). Not a test; the figures are in
README.md ("Bad input") and bench/README.md.
"""

import json
import sys
from pathlib import Path

import numpy as np
from matplotlib import cbook
from PIL import Image, ImageOps
from skimage import data
from sklearn.datasets import load_sample_image

CLASSES = ["person", "rocket", "cat", "cup", "spoon", "motorcycle", "tie", "camera", "flower"]
CLASSES += ["clock", "building", "coin"]
COINS = [
    [20, 33, 68, 78], [80, 38, 118, 78], [130, 27, 180, 78], [190, 27, 240, 75],
    [252, 33, 295, 75], [300, 10, 360, 95], [18, 100, 68, 148], [82, 105, 122, 145],
    [132, 107, 172, 148], [185, 103, 228, 148], [245, 95, 298, 148], [315, 105, 357, 143],
    [22, 175, 60, 215], [78, 172, 122, 218], [133, 177, 172, 218], [187, 168, 240, 220],
    [250, 170, 300, 218], [312, 155, 378, 228], [18, 230, 75, 285], [92, 245, 135, 285],
    [143, 235, 198, 287], [220, 240, 270, 287], [272, 238, 320, 290], [333, 245, 380, 290],
]  # fmt: skip
# photo -> (pixels, [(class, xyxy box in its pixels)])
PHOTOS = {
    "astronaut": (data.astronaut, [("person", [20, 15, 365, 512]), ("rocket", [355, 0, 472, 285])]),
    "camera": (data.camera, [("person", [0, 65, 330, 512]), ("camera", [230, 135, 405, 512])]),
    "chelsea": (data.chelsea, [("cat", [0, 0, 451, 300])]),
    "coffee": (data.coffee, [("cup", [172, 15, 420, 305]), ("spoon", [325, 65, 425, 325])]),
    "motorcycle_left": (lambda: data.stereo_motorcycle()[0], [("motorcycle", [92, 95, 685, 450])]),
    "motorcycle_right": (lambda: data.stereo_motorcycle()[1], [("motorcycle", [78, 40, 630, 450])]),
    "rocket": (data.rocket, [("rocket", [300, 125, 340, 410])]),
    "clock": (data.clock, [("clock", [145, 95, 290, 215])]),
    "flower": (
        lambda: load_sample_image("flower.jpg"),
        [("flower", [168, 85, 447, 360]), ("flower", [288, 375, 442, 427])],
    ),
    "china": (lambda: load_sample_image("china.jpg"), [("building", [60, 28, 372, 395])]),
    "grace_hopper": (
        lambda: np.asarray(Image.open(cbook.get_sample_data("grace_hopper.jpg"))),
        [("person", [15, 20, 512, 600]), ("tie", [215, 405, 300, 525])],
    ),
    "coins": (data.coins, [("coin", box) for box in COINS]),
}
MIRRORED = ["astronaut", "coffee", "motorcycle_left", "grace_hopper"]


def main(root: Path) -> None:
    (root / "train2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, annotations = [], []
    files = {}
    for name, mirror in [(n, False) for n in PHOTOS] + [(n, True) for n in MIRRORED]:
        load, objects = PHOTOS[name]
        if mirror:  # a mirrored copy of the file written above
            photo = ImageOps.mirror(Image.open(files[name]))
        else:
            photo = Image.fromarray(load()).convert("RGB")
        image_id = len(images) + 1
        file_name = f"{image_id:012d}.jpg"
        photo.save(root / "train2017" / file_name, quality=95)
        files.setdefault(name, root / "train2017" / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": photo.width,
                       "height": photo.height})  # fmt: skip
        for label, (x0, y0, x1, y1) in objects:
            if mirror:
                x0, x1 = photo.width - x1, photo.width - x0
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": CLASSES.index(label) + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
            })  # fmt: skip
    # COCO's 80 categories: the 12 used here, then unused ones, so the predictor has COCO's size
    names = CLASSES + [f"unused{i}" for i in range(len(CLASSES) + 1, 81)]
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(coco))
    print(f"{len(images)} photos, {len(annotations)} boxes -> {root}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "data/photos"))
