"""The cost of the evaluation report against the COCO evaluation it comes with.

    uv run python bench/evaluation_report.py [--images 100 1000 5000] [--classes 80]

For each number of images: synthetic ground truth (7 boxes per image, COCO's mean, sizes from
10 to 300 px) and 100 detections per image (a jittered hit or two on most boxes, some in
another class, the rest stray boxes), as a detector returns them. Times, in seconds on this
machine: torchmetrics' COCO evaluation (what every validation already runs), then each part of
the report: the confusion matrix, the TIDE error breakdown, the data and anchor statistics (a
ResNet-50 FPN's anchors at 400 px) and the whole `write_report` (the parts above, the tables
and every PNG). The last column is the report's time as a share of the evaluation's.
Not a test.
"""

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torchmetrics.detection import MeanAveragePrecision

from frcnn.evaluation.confusion import confusion_matrix
from frcnn.evaluation.dataset_stats import dataset_statistics
from frcnn.evaluation.report import write_report
from frcnn.evaluation.results import Evaluation
from frcnn.evaluation.tide import error_breakdown
from frcnn.model import FasterRCNN

SIZE = 400


def make_images(images: int, classes: int, seed: int = 0):
    """Per image: 7 boxes of random classes and 100 detections: two jittered hits per box (one
    in ten in another class), the rest small stray boxes scored lower."""
    g = torch.Generator().manual_seed(seed)
    preds, truths = [], []
    n, hits, stray = 7, 14, 100 - 14
    for _ in range(images):
        sides = 10 + torch.rand(n, 2, generator=g) * 290
        xy = torch.rand(n, 2, generator=g) * (SIZE - sides)
        gt = torch.cat([xy, xy + sides], 1)
        labels = torch.randint(1, classes + 1, (n,), generator=g)
        jitter = torch.randn(hits, 4, generator=g) * sides.repeat(2, 2) * 0.1
        wrong = torch.rand(hits, generator=g) > 0.9
        hit_labels = torch.where(wrong, torch.randint(1, classes + 1, (hits,), generator=g),
                                 labels.repeat(2))  # fmt: skip
        stray_xy = torch.rand(stray, 2, generator=g) * (SIZE - 40)
        stray_wh = 10 + torch.rand(stray, 2, generator=g) * 30
        boxes = torch.cat([gt.repeat(2, 1) + jitter, torch.cat([stray_xy, stray_xy + stray_wh], 1)])
        boxes = boxes.clamp(0, SIZE)
        low, high = boxes[:, :2].minimum(boxes[:, 2:]), boxes[:, :2].maximum(boxes[:, 2:])
        scores = torch.cat(
            [0.3 + 0.7 * torch.rand(hits, generator=g), 0.6 * torch.rand(stray, generator=g)]
        )
        stray_labels = torch.randint(1, classes + 1, (stray,), generator=g)
        preds.append(
            {
                "boxes": torch.cat([low, high + 1], 1),
                "scores": scores,
                "labels": torch.cat([hit_labels, stray_labels]),
            }
        )
        truths.append({"boxes": gt, "labels": labels, "iscrowd": torch.zeros(n, dtype=torch.long)})
    return preds, truths


def coco_evaluation(preds, truths):
    metric = MeanAveragePrecision(backend="faster_coco_eval", extended_summary=True)
    metric.update(preds, truths)
    return metric.compute()


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--classes", type=int, default=80)
    args = parser.parse_args()
    model = FasterRCNN(num_classes=args.classes, backbone=dict(depth=50, frozen="none"))
    columns = ("COCOeval", "confusion", "TIDE", "data", "report", "share")
    print(f"{'images':>7} " + " ".join(f"{c:>9}" for c in columns))
    for images in args.images:
        preds, truths = make_images(images, args.classes)
        result, coco = timed(coco_evaluation, preds, truths)
        _, confusion = timed(confusion_matrix, preds, truths, args.classes)
        _, tide = timed(error_breakdown, preds, truths)
        boxes = [t["boxes"] for t in truths]
        labels = [t["labels"] for t in truths]
        _, data = timed(dataset_statistics, boxes, labels, model, SIZE)
        evaluation = Evaluation(
            preds, truths, boxes, labels, result["precision"],
            sorted(set(torch.cat([t["labels"] for t in truths]).tolist())
                   | set(torch.cat([p["labels"] for p in preds]).tolist())),
            image_size=SIZE, class_names=[f"class {i}" for i in range(1, args.classes + 1)],
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as folder:
            _, report = timed(write_report, evaluation, Path(folder) / "report", model)
        times = (coco, confusion, tide, data, report, report / coco)
        print(f"{images:>7} " + " ".join(f"{t:>9.2f}" for t in times))


if __name__ == "__main__":
    main()
