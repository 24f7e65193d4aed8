"""val/map is COCO's mAP: equal to the official COCOeval on the same detections and json."""

import json
import math
from collections import Counter

import lightning as L
import numpy as np
import pytest
import torch
from faster_coco_eval import COCO, COCOeval_faster
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from frcnn.data import COCOFolder, Transform, collate
from frcnn.data.synthetic import draw_sample
from frcnn.evaluation.results import COLUMNS, per_class_table
from frcnn.training.module import MAP_KEYS, DetectorModule
from tests.app.helpers import coco_json_folder, metrics, refused, run, run_dirs

SIZES = [(640, 480), (320, 500), (500, 375), (200, 150), (427, 640), (600, 600)]
CATEGORIES = [
    {"id": 1, "name": "person"},
    {"id": 18, "name": "dog"},
    {"id": 90, "name": "toothbrush"},
]


def coco_json_with_crowds(root, rng):
    """Images of real sizes; objects of all three COCO area ranges with mask areas below their
    box areas (as masks are); a crowd region in every other image."""
    (root / "images").mkdir()
    images, annotations = [], []
    for image_id, (width, height) in enumerate(SIZES, start=1):
        Image.new("RGB", (width, height), (90, 90, 90)).save(root / "images" / f"{image_id}.jpg")
        images.append(
            {"id": image_id, "file_name": f"{image_id}.jpg", "width": width, "height": height}
        )
        for k in range(int(rng.integers(2, 6))):
            side = float(rng.choice([20, 60, 150]) * rng.uniform(0.8, 1.25))
            w, h = min(side, width - 2), min(side * rng.uniform(0.6, 1.4), height - 2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            crowd = image_id % 2 == 0 and k == 0
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice([1, 18, 90])),
                    "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                    "area": round(w * h * rng.uniform(0.5, 0.9), 2),
                    "iscrowd": int(crowd),
                }
            )
    path = root / "instances_val.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    )
    return path


def detections_for(annotations, rng):
    """COCO results: a near hit on most objects (some in the wrong class), a detection on each
    crowd region, duplicates and stray boxes; distinct scores."""
    results = []
    for ann in annotations:
        x, y, w, h = ann["bbox"]
        for _ in range(1 if ann["iscrowd"] else int(rng.integers(0, 3))):
            jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
            category = ann["category_id"] if rng.random() < 0.8 else 18
            results.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": category,
                    "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]],
                }
            )
    for image_id, (width, height) in enumerate(SIZES, start=1):
        for _ in range(3):
            x, y = rng.uniform(0, width - 40), rng.uniform(0, height - 40)
            results.append({"image_id": image_id, "category_id": 1, "bbox": [x, y, 30.0, 35.0]})
    for i, result in enumerate(results):
        x, y, w, h = result["bbox"]
        width, height = SIZES[result["image_id"] - 1]
        x0, y0 = max(0.0, x), max(0.0, y)  # inside the image, as the detector's boxes are
        x1, y1 = min(width, x + max(w, 2)), min(height, y + max(h, 2))
        result["bbox"] = [round(float(v), 3) for v in (x0, y0, x1 - x0, y1 - y0)]
        result["score"] = round(0.05 + 0.9 * (i * 7919 % len(results)) / len(results), 4)
    return results


class FixedDetections(nn.Module):
    """A stand-in for the detector at its validation seam: returns given detections (COCO
    results, original pixels) in input pixels, and zero losses."""

    def __init__(self, results, label_of):
        super().__init__()
        self.results, self.label_of = results, label_of
        self.weight = nn.Parameter(torch.zeros(1))  # something for the optimiser

    def forward_with_losses(self, images, targets, image_sizes=None):
        detections = []
        for target in targets:
            mine = [r for r in self.results if r["image_id"] == target["image_id"]]
            xywh = torch.tensor([r["bbox"] for r in mine], dtype=torch.float32).reshape(-1, 4)
            boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
            detections.append(
                {
                    "boxes": boxes * target["scale_xy"].repeat(2),
                    "scores": torch.tensor([r["score"] for r in mine]),
                    "labels": torch.tensor([self.label_of[r["category_id"]] for r in mine]),
                }
            )
        zero = self.weight.sum() * 0
        return {k: zero for k in ("rpn_cls", "rpn_box", "roi_cls", "roi_box")}, detections


def validated(module, source) -> L.Trainer:
    """`module` validated on `source` by a bare Trainer; the trainer (its callback_metrics)."""
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.validate(module, DataLoader(source, batch_size=4, collate_fn=collate), verbose=False)
    return trainer


@pytest.mark.parametrize("seed", [0, 1])
def test_val_map_equals_the_official_cocoeval_with_crowds_and_mask_areas(tmp_path, seed):
    rng = np.random.default_rng(seed)
    annotation_file = coco_json_with_crowds(tmp_path, rng)
    annotations = json.loads(annotation_file.read_text())["annotations"]
    assert any(a["iscrowd"] for a in annotations)
    results = detections_for(annotations, rng)

    truth = COCO(str(annotation_file))
    official = COCOeval_faster(
        truth, truth.loadRes(results), "bbox", print_function=lambda *a: None
    )
    official.evaluate()
    official.accumulate()
    official.summarize()
    expected = dict(zip(MAP_KEYS, official.stats[:6], strict=True)) | {"mar_100": official.stats[8]}

    source = COCOFolder(Transform(416), str(annotation_file), str(tmp_path / "images"))
    module = DetectorModule(FixedDetections(results, source.label_of), torch.optim.SGD)
    trainer = validated(module, source)
    for key, value in expected.items():
        assert float(trainer.callback_metrics[f"val/{key}"]) == pytest.approx(value, abs=1e-4), key


def test_the_per_class_table_equals_cocoeval_run_on_each_class_alone(tmp_path):
    """AP, AP50, AP75, APs/m/l of every class, read from the precision array of the one
    evaluation of all classes, against the official COCOeval restricted to that class
    (`params.catIds`, its own summary), crowds and mask areas included; boxes counted without
    crowds; worst first. Then the module's table of the same detections: its AP column is
    torchmetrics' per-class mAP, class by class."""
    rng = np.random.default_rng(2)
    annotation_file = coco_json_with_crowds(tmp_path, rng)
    annotations = json.loads(annotation_file.read_text())["annotations"]
    results = detections_for(annotations, rng)
    truth = COCO(str(annotation_file))

    def cocoeval(category_ids):
        evaluation = COCOeval_faster(
            truth, truth.loadRes(results), "bbox", print_function=lambda *a: None
        )
        evaluation.params.catIds = category_ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        return evaluation

    ids = sorted(c["id"] for c in CATEGORIES)
    names = {c["id"]: c["name"] for c in CATEGORIES}
    boxes = Counter(a["category_id"] for a in annotations if not a["iscrowd"])
    precision = torch.from_numpy(cocoeval(ids).eval["precision"])
    rows = {r["class"]: r for r in per_class_table(precision, ids, None, boxes)}
    for category_id in ids:
        row, alone = rows[str(category_id)], cocoeval([category_id])
        for key, value in zip(COLUMNS[1:7], alone.stats[:6], strict=True):
            if value == -1:  # COCO's "no ground truth of that kind"
                assert np.isnan(row[key]), (names[category_id], key)
            else:
                assert row[key] == pytest.approx(value, abs=1e-9), (names[category_id], key)
        assert row["boxes"] == boxes[category_id]
    aps = [row["AP"] for row in rows.values()]
    assert aps == sorted(aps)

    source = COCOFolder(Transform(416), str(annotation_file), str(tmp_path / "images"))
    module = DetectorModule(
        FixedDetections(results, source.label_of), torch.optim.SGD, per_class_map=True,
        class_names=[names[i] for i in ids],
    )  # fmt: skip
    trainer = validated(module, source)
    e = module.evaluation
    table = per_class_table(e.precision, e.classes, e.class_names, e.boxes_per_class())
    assert table != []
    for row in table:
        logged = float(trainer.callback_metrics[f"val/ap/{row['class']}"])
        assert row["AP"] == pytest.approx(logged, abs=1e-6), row["class"]
        assert row["boxes"] == boxes[next(i for i in ids if names[i] == row["class"])]


def test_a_class_the_validation_data_lacks_has_its_row_with_no_boxes():
    """COCOeval knows only the classes its ground truth or detections hold: a class of the
    data's list that neither has (none of it in the validation split) shows, nan, 0 boxes."""
    precision = torch.full((10, 101, 2, 4, 3), 0.5)  # two classes, every cell 0.5
    precision[:, :, 1] = -1  # label 3: detections, no ground truth
    rows = per_class_table(precision, [1, 3], ["cat", "dog", "bird"], {1: 4})
    assert [(r["class"], r["boxes"]) for r in rows] == [("cat", 4), ("bird", 0), ("dog", 0)]
    assert rows[0]["AP"] == 0.5 and all(math.isnan(r[k]) for r in rows[1:] for k in COLUMNS[1:7])
    assert len(per_class_table(precision, [1, 3], None, {1: 4})) == 2  # no names: no list


def synthetic_as_coco_json(root, names: list[str], all_names: list[str], count: int) -> list:
    """The synthetic validation images (seed 1) as a user's COCO json of the classes `names`
    (some of `all_names`, in their own order: their objects only), lossless PNGs. Returns the
    data=coco_files overrides that point at it."""
    (root / "images").mkdir(parents=True)
    category = {name: 10 * (i + 1) for i, name in enumerate(names)}  # labels: this order
    images, annotations = [], []
    for i in range(count):
        record = draw_sample(1, i, len(all_names))
        record.image.save(root / "images" / f"{i}.png")
        images.append({"id": i, "file_name": f"{i}.png", "width": record.image.width,
                       "height": record.image.height})  # fmt: skip
        for (x0, y0, x1, y1), label in zip(record.boxes.tolist(), record.labels, strict=True):
            if all_names[label - 1] in category:
                box = [x0, y0, x1 - x0, y1 - y0]
                annotations.append({"id": len(annotations) + 1, "image_id": i, "bbox": box,
                                    "area": box[2] * box[3], "iscrowd": 0,
                                    "category_id": category[all_names[label - 1]]})  # fmt: skip
    categories = [{"id": cid, "name": name} for name, cid in category.items()]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (root / "val.json").write_text(json.dumps(coco))
    return [f"data.val.annotation_file={root}/val.json", f"data.val.image_dir={root}/images"]


def test_eval_scores_the_data_s_classes_by_name(trained, tmp_path):
    """A checkpoint evaluated on data of some of its classes, in another order: each class
    scores as it does on the checkpoint's own data (COCO's AP of a class is the class's alone),
    the mAP is their mean, and the report counts their boxes under their names."""
    _, run_dir = trained
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    all_names = torch.load(checkpoint, weights_only=True)["class_names"]
    names = [all_names[4], all_names[1], all_names[5], all_names[2]]
    per_class = ["module.per_class_map=true", "device=cpu"]
    run("eval.py", f"ckpt_path={checkpoint}", *per_class, log_dir=tmp_path / "own")
    own = metrics(run_dirs(tmp_path / "own", "eval")[0])
    data = synthetic_as_coco_json(tmp_path / "mine", names, all_names, count=8)
    small = ["data.image_size=96", "data.batch_size=4", "data.num_workers=0"]
    out = run("eval.py", f"ckpt_path={checkpoint}", "data=coco_files", *data, *small,
              *per_class, log_dir=tmp_path / "mine_logs")  # fmt: skip
    assert f"{names[0]!r} 1 -> 5" in out.stderr + out.stdout
    evaluated = run_dirs(tmp_path / "mine_logs", "eval")[0]
    scored = metrics(evaluated)
    aps = [own[f"val/ap/{name}"] for name in names]
    for name, ap in zip(names, aps, strict=True):
        assert scored[f"val/ap/{name}"] == pytest.approx(ap, abs=1e-6), name
    assert scored["val/map"] == pytest.approx(np.mean(aps), abs=1e-6)
    table = (evaluated / "report" / "per_class.csv").read_text().splitlines()[1:]
    boxes = {row.split(",")[0]: int(row.split(",")[-1]) for row in table}
    assert {name for name, count in boxes.items() if count} == set(names)


def test_eval_on_data_of_other_classes_is_refused_naming_them(trained, tmp_path):
    """The probe's case: a 6-class checkpoint on a 4-class COCO json (person and car scored
    as the checkpoint's shapes, rc 0)."""
    _, run_dir = trained
    data = coco_json_folder(tmp_path / "mine", ["person", "car", "blue triangle", "dog"])
    message = (
        r"the data's classes 'person', 'car', 'dog' are not among the checkpoint's 6 classes "
        r"\('red rectangle', 'green ellipse', "
    )
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    with pytest.raises(AssertionError, match=message):
        run("eval.py", f"ckpt_path={checkpoint}", "data=coco_files", *data, "device=cpu",
            log_dir=tmp_path / "logs")  # fmt: skip


def test_eval_refuses_a_trainer_switch_hydra_read_as_a_word(trained, tmp_path):
    """eval.py's trainer comes from the checkpoint's config and the command line: a switch
    given as a word (Lightning took 'off' as true) is refused before the data is read."""
    _, run_dir = trained
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    printed = refused("eval.py", f"ckpt_path={checkpoint}", "trainer.enable_progress_bar=off",
                      "device=cpu", log_dir=tmp_path / "logs")  # fmt: skip
    assert "trainer.enable_progress_bar='off': must be true, false or null" in printed
