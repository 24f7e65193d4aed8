"""Where the AP goes: every false positive and miss of an evaluation sorted into the error types
of TIDE (Bolya et al., ECCV 2020), and the AP50 gained by fixing each type alone.

The matching is COCOeval's at IoU 0.5 (per image and class, detections by score, each ground
truth box matched once, the highest IoU first, a detection on a crowd region ignored), so the
AP50 before any fix is COCO's AP50. A false positive is then, tested in this order (TIDE's):

- localisation: 0.1 <= IoU <= 0.5 with a box of its class;
- classification: IoU >= 0.5 with a box of another class;
- duplicate: IoU >= 0.5 with a box of its class that a higher-scoring detection took;
- background: IoU <= 0.1 with every box;
- both: anything else (0.1 < IoU < 0.5 with a box of another class);

and a missed box is one no detection matched nor targeted by a localisation or classification
error. Fixing a localisation or classification error makes the highest-scoring detection that
targets a still unmatched box a true positive (of that box's class) and drops the others;
fixing a duplicate, background or both error drops the detection; fixing a miss removes the box.
Unlike TIDE's own code, which treats them as false positives, detections on crowd regions stay
ignored, as COCOeval does.
"""

from typing import NamedTuple

import numpy as np
import torch

from frcnn.boxes import pairwise_ioa, pairwise_iou

TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")
CLS, LOC, BOTH, DUPE, BKG, MISS = range(len(TYPES))
# COCO's 101 recall points as val/map has them: torchmetrics passes float32 ones to COCOeval, so a
# recall of exactly 0.6 falls short of the point 0.6000000238 (pycocotools' float64 ones differ)
RECALL_POINTS = torch.linspace(0, 1, 101).double().numpy()


def coco_ap(true_positive: np.ndarray, num_truth: int) -> float:
    """COCO's AP of one class: detections ranked by score (True = a match), precision made
    monotone, read at 101 recall points and averaged. nan without ground truth."""
    if num_truth == 0:
        return float("nan")
    tp = np.cumsum(true_positive)
    fp = np.cumsum(~true_positive)
    recall = tp / num_truth
    precision = np.maximum.accumulate((tp / np.maximum(tp + fp, 1))[::-1])[::-1]
    found = np.searchsorted(recall, RECALL_POINTS, side="left")
    at_points = np.zeros(len(RECALL_POINTS))  # recall points never reached count 0
    reached = found < len(precision)
    at_points[reached] = precision[found[reached]]
    return float(at_points.mean())


class ImageDetections(NamedTuple):
    """One image's kept detections, in score order (arrays of D)."""

    labels: np.ndarray
    scores: np.ndarray
    tp: np.ndarray  # matched a box of its class at the foreground IoU (COCO's true positive)
    error: np.ndarray  # the error type (CLS..BKG), -1 for a true positive or ignored one
    fixed_labels: np.ndarray  # its label once its error is fixed
    fixed_tp: np.ndarray  # a true positive once its error is fixed
    kept: np.ndarray  # not ignored (on a crowd region)


class ImageTruth(NamedTuple):
    """One image's non-crowd ground truth (arrays of G)."""

    labels: np.ndarray
    missed: np.ndarray  # no detection matched or aimed at it


def _best_per_class(pred: dict, max_detections: int):
    """The detections by score (stable), COCO's best `max_detections` per image and class ->
    labels, boxes (float64), scores."""
    order = torch.sort(pred["scores"], descending=True, stable=True).indices
    labels, boxes = pred["labels"][order], pred["boxes"][order].double()
    rank = torch.zeros_like(labels)
    for label in labels.unique():
        mine = labels == label
        rank[mine] = torch.arange(int(mine.sum()))
    keep = rank < max_detections
    return labels[keep], boxes[keep], pred["scores"][order][keep]


def _match(cls_iou: np.ndarray, fg: float) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval's greedy matching, detections in score order, each box once -> (tp per
    detection, used per box)."""
    d, g = cls_iou.shape
    tp, used = np.zeros(d, bool), np.zeros(g, bool)
    available = cls_iou.copy()
    for i in range(d if g else 0):
        j = int(available[i].argmax())
        if available[i, j] >= fg:
            tp[i], used[j] = True, True
            available[:, j] = 0
    return tp, used


def _error_types(iou, cls_iou, noncls_iou, used, unmatched, fg, bg):
    """Each unmatched detection's error type, and the box a localisation or classification
    error aims at (-1: none)."""
    d, g = iou.shape
    error, target = np.full(d, -1), np.full(d, -1)
    for i in np.flatnonzero(unmatched):
        if g == 0:
            error[i] = BKG
        elif bg <= cls_iou[i].max() <= fg:
            error[i], target[i] = LOC, cls_iou[i].argmax()
        elif noncls_iou[i].max() >= fg:
            error[i], target[i] = CLS, noncls_iou[i].argmax()
        elif (cls_iou[i] * used).max() >= fg:
            error[i] = DUPE
        elif iou[i].max() <= bg:
            error[i] = BKG
        else:
            error[i] = BOTH
    return error, target


def _fixes(labels: np.ndarray, target: np.ndarray, used: np.ndarray, gt_labels: np.ndarray):
    """Fixing the errors that aim at a box: the highest-scoring of those aiming at each box
    not already taken becomes its true positive (with its label) -> (fixed labels, fixed tp,
    targeted boxes)."""
    fixed_labels, fixed_tp = labels.copy(), np.zeros(len(labels), bool)
    targeted = np.zeros(len(gt_labels), bool)
    for j in np.unique(target[target >= 0]):
        if used[j]:
            continue  # taken by a true positive: fixing these makes duplicates, dropped
        targeted[j] = True
        best = np.flatnonzero(target == j)[0]
        fixed_tp[best], fixed_labels[best] = True, int(gt_labels[j])
    return fixed_labels, fixed_tp, targeted


def _image(pred, truth, fg, bg, max_detections) -> tuple[ImageDetections, ImageTruth]:
    """One image's detections and ground truth, matched, typed and fixed."""
    crowd = truth["iscrowd"].bool()
    gt_boxes, gt_labels = truth["boxes"][~crowd].double(), truth["labels"][~crowd]
    crowd_boxes, crowd_labels = truth["boxes"][crowd].double(), truth["labels"][crowd]
    labels, boxes, scores = _best_per_class(pred, max_detections)
    d, g = len(labels), len(gt_labels)
    iou = pairwise_iou(boxes, gt_boxes).numpy() if d and g else np.zeros((d, g))
    same = (labels[:, None] == gt_labels[None, :]).numpy()
    cls_iou, noncls_iou = iou * same, iou * ~same
    tp, used = _match(cls_iou, fg)
    ignored = np.zeros(d, bool)
    if len(crowd_boxes) and d:
        on_crowd = (pairwise_ioa(boxes, crowd_boxes) >= fg) & (
            labels[:, None] == crowd_labels[None, :]
        )
        ignored = ~tp & on_crowd.any(1).numpy()
    error, target = _error_types(iou, cls_iou, noncls_iou, used, ~tp & ~ignored, fg, bg)
    fixed_labels, fixed_tp, targeted = _fixes(labels.numpy(), target, used, gt_labels.numpy())
    detections = ImageDetections(
        labels.numpy(), scores.double().numpy(), tp, error, fixed_labels, fixed_tp, ~ignored
    )
    return detections, ImageTruth(gt_labels.numpy(), ~used & ~targeted)


def error_breakdown(
    preds: list[dict],
    truths: list[dict],
    foreground_iou: float = 0.5,
    background_iou: float = 0.1,
    max_detections: int = 100,
) -> dict:
    """TIDE's error types of detections `preds` (boxes xyxy, scores, labels per image) against
    `truths` (boxes, labels, iscrowd per image), same pixels.

    Returns {"AP50": COCO's AP at `foreground_iou`, "dAP": {type: AP gained by fixing that type
    alone}, "count": {type: number of such errors}} (APs in 0..1, the mean over classes with
    ground truth, as COCO).
    """
    images = [
        _image(pred, truth, foreground_iou, background_iou, max_detections)
        for pred, truth in zip(preds, truths, strict=True)
    ]
    dets = ImageDetections(*(np.concatenate(c) for c in zip(*(d for d, _ in images), strict=True)))
    gts = ImageTruth(*(np.concatenate(c) for c in zip(*(t for _, t in images), strict=True)))
    labels, scores, tp, error, fixed_labels, fixed_tp, kept = dets
    gt_labels, missed = gts
    # each detection's image and its place in the image's score order
    image = np.concatenate([np.full(len(d.labels), k) for k, (d, _) in enumerate(images)])
    rank = np.concatenate([np.arange(len(d.labels)) for d, _ in images])
    # COCO's ranking: by score, ties in image order, then in the image's order
    ranked = np.lexsort((rank, image, -scores))
    classes = np.unique(gt_labels)

    def mean_ap(labels, tp, keep, gt_labels):
        aps = [
            coco_ap(tp[ranked][(labels[ranked] == c) & keep[ranked]], int((gt_labels == c).sum()))
            for c in classes
        ]
        aps = [ap for ap in aps if not np.isnan(ap)]
        return float(np.mean(aps)) if aps else float("nan")

    base = mean_ap(labels, tp, kept, gt_labels)
    result = {"AP50": base, "dAP": {}, "count": {}}
    for kind, name in enumerate(TYPES):
        if kind == MISS:
            gained = mean_ap(labels, tp, kept, gt_labels[~missed])
            count = int(missed.sum())
        else:
            fix = error == kind
            fixed = np.where(fix, fixed_labels, labels)
            keep = kept & (~fix | fixed_tp)
            gained = mean_ap(fixed, np.where(fix, fixed_tp, tp), keep, gt_labels)
            count = int(fix.sum())
        result["dAP"][name] = gained - base
        result["count"][name] = count
    return result
