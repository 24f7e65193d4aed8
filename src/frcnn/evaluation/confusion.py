"""The confusion matrix of a detector: which class each ground-truth box was detected as.

Detections with a score of at least `score` are matched to ground truth of any class, per
image, the highest-scoring detection first, each to the still unmatched box it overlaps most
with IoU >= `iou` (COCO's greedy matching, without the class). A detection left over that
lies on a crowd region (half its area or more) is not counted, as COCOeval ignores it.
"""

import torch
from torch import Tensor

from frcnn.boxes import pairwise_ioa, pairwise_iou


def confusion_matrix(
    preds: list[dict], truths: list[dict], num_classes: int, iou: float = 0.5, score: float = 0.5
) -> Tensor:
    """-> (C + 1, C + 1) int64 counts: row = the true class (labels 1..C at rows 0..C-1), column
    = the class it was detected as; the last row (background) counts detections matched to no
    box (false positives), the last column boxes no detection matched (misses)."""
    matrix = torch.zeros(num_classes + 1, num_classes + 1, dtype=torch.int64)
    background = num_classes
    for pred, truth in zip(preds, truths, strict=True):
        crowd = truth["iscrowd"].bool()
        gt_boxes, gt_labels = truth["boxes"][~crowd].double(), truth["labels"][~crowd] - 1
        confident = pred["scores"] >= score
        order = torch.sort(pred["scores"][confident], descending=True, stable=True).indices
        boxes, labels = (
            pred["boxes"][confident][order].double(),
            pred["labels"][confident][order] - 1,
        )
        overlap = pairwise_iou(boxes, gt_boxes)
        taken = torch.zeros(len(gt_labels), dtype=torch.bool)
        unmatched = torch.ones(len(labels), dtype=torch.bool)
        for i in range(len(labels) if len(gt_labels) else 0):
            candidates = overlap[i].masked_fill(taken, -1)
            j = int(candidates.argmax())
            if candidates[j] >= iou:
                taken[j], unmatched[i] = True, False
                matrix[gt_labels[j], labels[i]] += 1
        if crowd.any() and len(labels):
            unmatched &= ~(pairwise_ioa(boxes, truth["boxes"][crowd].double()) >= iou).any(1)
        matrix[background].index_add_(0, labels[unmatched], torch.ones_like(labels[unmatched]))
        missed = gt_labels[~taken]
        matrix[:, background].index_add_(0, missed, torch.ones_like(missed))
    return matrix


def normalised(matrix: Tensor) -> Tensor:
    """Each row divided by its sum (where the boxes of that class went; the background row:
    which classes the false positives claimed); rows without counts stay 0."""
    counts = matrix.double()
    return counts / counts.sum(1, keepdim=True).clamp(min=1)


def classes_by_errors(matrix: Tensor) -> list[int]:
    """The classes (rows 0..C-1 of a `confusion_matrix`) with a box or a detection, the most
    errors first (their row's and column's counts off the diagonal: boxes detected as another
    class or missed, detections on another class's box or on none), then the most boxes."""
    totals = (matrix.sum(0) + matrix.sum(1))[:-1]
    errors = (totals - 2 * matrix.diagonal()[:-1]).tolist()
    boxes = matrix.sum(1)[:-1].tolist()
    seen = [k for k, total in enumerate(totals.tolist()) if total]
    return sorted(seen, key=lambda k: (-errors[k], -boxes[k]))
