"""Per-class figures and precision-recall curves of an evaluation, read from COCOeval's own
accumulated precision array (torchmetrics' `extended_summary`): the same matching as the
summary numbers, not a second one.
"""

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from frcnn.evaluation.tables import markdown_table
from frcnn.structures import class_name

COLUMNS = ("class", "AP", "AP50", "AP75", "APs", "APm", "APl", "boxes")
# the curves drawn: index into COCOeval's IoU thresholds 0.5:0.05:0.95; None = their mean (AP's)
CURVE_IOUS = {"0.5": 0, "0.75": 5, "0.5:0.95": None}
RECALL = torch.linspace(0, 1, 101, dtype=torch.float64)  # COCO's recall points
# the most classes a picture shows one by one (COCO's 80 all): of more (LVIS's 1203), a row or
# a bar or a TensorBoard card per class would be metres of figure or thousands of cards (the
# CSVs have every class)
FIGURE_CLASSES = 80


@dataclass
class Evaluation:
    """One validation, all images: what the report is made of.

    preds / truths: per image, as given to COCOeval (original pixels): boxes (N, 4) xyxy,
    scores, labels / labels, iscrowd. input_boxes / input_labels: the non-crowd ground truth
    in input pixels (the detector's S x S input, `image_size`). precision: COCOeval's
    (T, R, K, A, M) array of the `classes` (sorted labels). metrics: its summary figures.
    """

    preds: list[dict]
    truths: list[dict]
    input_boxes: list[Tensor]
    input_labels: list[Tensor]
    precision: Tensor
    classes: list[int]
    image_size: int = 0
    class_names: list[str] | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def name(self, label: int) -> str:
        return class_name(label, self.class_names)

    def boxes_per_class(self) -> dict[int, int]:
        labels = [t["labels"][t["iscrowd"] == 0] for t in self.truths]
        counts = torch.bincount(torch.cat(labels)) if labels else torch.zeros(0)
        return {label: int(n) for label, n in enumerate(counts.tolist()) if n}


def per_class_table(
    precision: Tensor, classes: list[int], class_names: list[str] | None, boxes: dict[int, int]
) -> list[dict]:
    """One row per class, the worst AP first (classes without ground truth, AP nan, last).
    Every class of `class_names` has its row: one that neither the ground truth nor the
    detections hold (a class the validation data lacks) is not in `classes`, and shows with 0
    boxes.

    precision: (T, R, K, A, M) from COCOeval's accumulate: IoU thresholds 0.5:0.05:0.95, 101
    recall points, the K `classes` (labels, in COCOeval's order: sorted), areas all / small /
    medium / large, max detections 1 / 10 / 100 (the last is COCO's). -1 marks no ground
    truth. `boxes`: ground-truth boxes per label (crowds left out).
    """

    def ap(values: Tensor) -> float:
        valid = values[values > -1]
        return float(valid.mean()) if valid.numel() else math.nan

    rows = []
    for k, label in enumerate(classes):
        at = precision[:, :, k, :, -1]  # (T, R, A) at 100 detections
        rows.append(
            {
                "class": class_name(label, class_names),
                "AP": ap(at[..., 0]),
                "AP50": ap(at[0, :, 0]),
                "AP75": ap(at[5, :, 0]),
                "APs": ap(at[..., 1]),
                "APm": ap(at[..., 2]),
                "APl": ap(at[..., 3]),
                "boxes": boxes.get(label, 0),
            }
        )
    absent = [label for label in range(1, len(class_names or []) + 1) if label not in classes]
    for label in absent:
        rows.append(
            {
                "class": class_name(label, class_names),
                **dict.fromkeys(COLUMNS[1:7], math.nan),
                "boxes": 0,
            }
        )
    rows.sort(key=lambda row: (math.isnan(row["AP"]), row["AP"]))
    return rows


def write_per_class(rows: list[dict], folder: Path) -> str:
    """per_class.csv and per_class.md in `folder`; returns the Markdown table."""
    with open(folder / "per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = markdown_table(rows, list(COLUMNS))
    (folder / "per_class.md").write_text(table)
    return table


def pr_curves(precision: Tensor) -> dict[str, Tensor]:
    """COCOeval's precision at its 101 recall points (all areas, 100 detections) per class,
    for each of CURVE_IOUS -> {iou: (K, 101)}, nan rows for classes without ground truth.

    The mean of a row is that class's AP at that IoU, the mean of the rows' means the mAP, and
    the mean curve (`mean_curve`) has the mAP as its area: COCO's AP is this curve's area.
    """
    at = precision[..., 0, -1].double().permute(2, 0, 1)  # (K, T, R)
    at = at.masked_fill(at < 0, math.nan)
    return {
        iou: (at.mean(1) if index is None else at[:, index]) for iou, index in CURVE_IOUS.items()
    }


def mean_curve(curves: Tensor) -> Tensor:
    """(K, 101) -> (101,): the mean over the classes with ground truth."""
    return curves.nanmean(0) if curves.numel() else RECALL * math.nan


def log_pr_curves(writer, evaluation: Evaluation, step: int) -> None:
    """The classes' mean curve and each class's (of at most FIGURE_CLASSES classes: 1203
    made 3,609 cards and 9 MB of events per validation) at each of CURVE_IOUS into
    TensorBoard's PR curves tab (`pr/<iou>/<class>`). TensorBoard wants counts beside
    precision and recall: they are derived from the curve and the class's box count (no true
    negatives in detection)."""
    boxes = evaluation.boxes_per_class()
    each = len(evaluation.classes) <= FIGURE_CLASSES
    for iou, curves in pr_curves(evaluation.precision).items():
        named = [("all", mean_curve(curves), sum(boxes.values()))]
        named += [
            (evaluation.name(label), curves[k], boxes.get(label, 0))
            for k, label in enumerate(evaluation.classes)
            if each and not curves[k].isnan().all()
        ]
        for name, precision, num_boxes in named:
            precision = precision.nan_to_num(0).flip(0)  # TensorBoard: thresholds rising
            recall = RECALL.flip(0)
            tp = recall * num_boxes
            fp = torch.where(precision > 0, tp * (1 - precision) / precision, 0)
            writer.add_pr_curve_raw(
                f"pr/{iou}/{name}",
                tp,
                fp,
                torch.zeros_like(tp),
                num_boxes - tp,
                precision,
                recall,
                global_step=step,
                num_thresholds=len(RECALL),
            )
