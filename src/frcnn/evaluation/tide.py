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


def _image(pred, truth, fg, bg, max_detections):
    """One image -> (labels, scores, tp, error, fixed label, fixed tp, kept) per kept detection
    in score order, and (labels, missed) per non-crowd ground truth box."""
    crowd = truth["iscrowd"].bool()
    gt_boxes, gt_labels = truth["boxes"][~crowd].double(), truth["labels"][~crowd]
    crowd_boxes, crowd_labels = truth["boxes"][crowd].double(), truth["labels"][crowd]
    order = torch.sort(pred["scores"], descending=True, stable=True).indices
    labels, boxes = pred["labels"][order], pred["boxes"][order].double()
    # COCO keeps the best `max_detections` per image and class
    rank = torch.zeros_like(labels)
    for label in labels.unique():
        mine = labels == label
        rank[mine] = torch.arange(int(mine.sum()))
    keep = rank < max_detections
    labels, boxes, scores = labels[keep], boxes[keep], pred["scores"][order][keep]
    d, g = len(labels), len(gt_labels)
    iou = pairwise_iou(boxes, gt_boxes).numpy() if d and g else np.zeros((d, g))
    same = (labels[:, None] == gt_labels[None, :]).numpy()
    cls_iou, noncls_iou = iou * same, iou * ~same

    tp = np.zeros(d, bool)
    used = np.zeros(g, bool)
    available = cls_iou.copy()
    for i in range(d if g else 0):
        j = int(available[i].argmax())
        if available[i, j] >= fg:
            tp[i], used[j] = True, True
            available[:, j] = 0
    ignored = np.zeros(d, bool)
    if len(crowd_boxes) and d:
        on_crowd = (pairwise_ioa(boxes, crowd_boxes) >= fg) & (
            labels[:, None] == crowd_labels[None, :]
        )
        ignored = ~tp & on_crowd.any(1).numpy()

    error = np.full(d, -1)
    target = np.full(d, -1)  # the box a localisation / classification error aims at
    for i in np.flatnonzero(~tp & ~ignored):
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
    fixed_labels, fixed_tp = labels.numpy().copy(), np.zeros(d, bool)
    targeted = np.zeros(g, bool)
    for j in np.unique(target[target >= 0]):
        if used[j]:
            continue  # taken by a true positive: fixing these makes duplicates, dropped
        targeted[j] = True
        best = np.flatnonzero(target == j)[0]  # the highest-scoring of those aiming at j
        fixed_tp[best], fixed_labels[best] = True, int(gt_labels[j])
    detections = (
        labels.numpy(),
        scores.double().numpy(),
        tp,
        error,
        fixed_labels,
        fixed_tp,
        ~ignored,
    )
    return detections, (gt_labels.numpy(), ~used & ~targeted)


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
    parts, truth_parts = [], []
    for image, (pred, truth) in enumerate(zip(preds, truths, strict=True)):
        dets, gts = _image(pred, truth, foreground_iou, background_iou, max_detections)
        parts.append((*dets, np.full(len(dets[0]), image), np.arange(len(dets[0]))))
        truth_parts.append(gts)
    labels, scores, tp, error, fixed_labels, fixed_tp, kept, image, rank = (
        np.concatenate(column) for column in zip(*parts, strict=True)
    )
    gt_labels, missed = (np.concatenate(column) for column in zip(*truth_parts, strict=True))
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
