"""TIDE's error breakdown: each hand-built error moves exactly its own type, and the AP50
before any fix is COCOeval's."""

import pytest
import torch
from torchmetrics.detection import MeanAveragePrecision

from frcnn.evaluation.tide import TYPES, coco_ap, error_breakdown

A = [0.0, 0.0, 10.0, 10.0]  # a class-1 object
B = [20.0, 20.0, 30.0, 30.0]  # a class-2 object


def image(pred_boxes, pred_labels, scores, gt_boxes, gt_labels, crowd=()):
    return (
        {
            "boxes": torch.tensor(pred_boxes).reshape(-1, 4),
            "labels": torch.tensor(pred_labels, dtype=torch.long),
            "scores": torch.tensor(scores),
        },
        {
            "boxes": torch.tensor(gt_boxes).reshape(-1, 4),
            "labels": torch.tensor(gt_labels, dtype=torch.long),
            "iscrowd": torch.tensor([int(i in crowd) for i in range(len(gt_labels))]),
        },
    )


def scene(extra_boxes=(), extra_labels=(), extra_scores=(), detect_a=True):
    """Two images with a class-1 and a class-2 object each, every object detected exactly
    (scores 0.9 and 0.5: a false positive scored in between costs AP), plus `extra`
    detections in the first image; `detect_a=False`: the first image's A is not detected."""
    first = [(A, 1, 0.9)] if detect_a else []
    first += [(B, 2, 0.9)] + list(zip(extra_boxes, extra_labels, extra_scores, strict=True))
    images = [
        image([b for b, _, _ in first], [c for _, c, _ in first], [s for _, _, s in first],
              [A, B], [1, 2]),
        image([A, B], [1, 2], [0.5, 0.5], [A, B], [1, 2]),
    ]  # fmt: skip
    return [p for p, _ in images], [t for _, t in images]


CASES = {
    # a class-2 detection on A (IoU 1), scored above the class-2 true positive of image 2
    "classification": dict(extra_boxes=[A], extra_labels=[2], extra_scores=[0.7]),
    # the only detection of A is poorly placed (IoU 0.4)
    "localisation": dict(
        extra_boxes=[[0.0, 0.0, 10.0, 25.0]], extra_labels=[1], extra_scores=[0.9], detect_a=False
    ),
    # a class-2 detection poorly placed on A (IoU 0.4): wrong class and place
    "both": dict(extra_boxes=[[0.0, 0.0, 10.0, 25.0]], extra_labels=[2], extra_scores=[0.7]),
    # A detected a second time (IoU 0.81)
    "duplicate": dict(extra_boxes=[[0.0, 0.0, 10.0, 9.0]], extra_labels=[1], extra_scores=[0.7]),
    # a detection far from every object
    "background": dict(
        extra_boxes=[[50.0, 50.0, 60.0, 60.0]], extra_labels=[1], extra_scores=[0.7]
    ),
    # A not detected at all
    "missed": dict(detect_a=False),
}


def test_a_perfect_scene_has_no_error():
    result = error_breakdown(*scene())
    assert result["AP50"] == pytest.approx(1.0)
    assert all(result["dAP"][t] == 0 for t in TYPES)
    assert all(result["count"][t] == 0 for t in TYPES)


@pytest.mark.parametrize("kind", TYPES)
def test_each_error_moves_its_own_type_only(kind):
    result = error_breakdown(*scene(**CASES[kind]))
    assert result["count"] == {t: int(t == kind) for t in TYPES}
    assert result["dAP"][kind] > 0.05
    assert result["AP50"] + result["dAP"][kind] == pytest.approx(1.0)  # fixing it is perfect
    assert all(result["dAP"][t] == 0 for t in TYPES if t != kind)


def test_the_highest_scoring_of_two_detections_aiming_at_a_box_is_the_fixed_one():
    """Two poorly placed detections of A: fixing localisation makes the better-scored one the
    true positive, drops the other (not a duplicate) and A is not missed."""
    loose = [[0.0, 0.0, 10.0, 25.0], [0.0, 0.0, 25.0, 10.0]]
    result = error_breakdown(*scene(loose, [1, 1], [0.9, 0.3], detect_a=False))
    assert result["count"]["localisation"] == 2
    assert result["count"]["missed"] == 0
    assert result["AP50"] + result["dAP"]["localisation"] == pytest.approx(1.0)


def test_a_detection_on_a_crowd_region_is_ignored_as_cocoeval_does():
    preds, truths = scene()
    pred, truth = image([[100.0, 100.0, 110.0, 110.0]], [1], [0.95],
                        [A, [90.0, 90.0, 150.0, 150.0]], [1, 1], crowd=(1,))  # fmt: skip
    result = error_breakdown([*preds, pred], [*truths, truth])
    assert result["count"]["background"] == 0
    assert result["count"]["missed"] == 1  # image 3's A, not the crowd region
    assert sum(result["count"].values()) == 1


def test_coco_ap_by_hand():
    # ranks: TP FP TP, 2 boxes: precision envelope 1 until recall 0.5, 2/3 until 1
    assert coco_ap(torch.tensor([True, False, True]).numpy(), 2) == pytest.approx(
        (51 * 1 + 50 * 2 / 3) / 101
    )
    assert coco_ap(torch.tensor([True]).numpy(), 4) == pytest.approx(26 / 101)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_ap50_before_fixes_is_cocoevals(seed):
    """Random scenes: jittered, missing, duplicated, mislabelled and stray detections, crowd
    regions; distinct scores. The AP50 equals torchmetrics' COCOeval (faster-coco-eval)."""
    g = torch.Generator().manual_seed(seed)
    preds, truths = [], []
    for _ in range(12):
        n = int(torch.randint(1, 6, (), generator=g))
        xy = torch.rand(n, 2, generator=g) * 200
        wh = 10 + torch.rand(n, 2, generator=g) * 60
        gt = torch.cat([xy, xy + wh], 1)
        labels = torch.randint(1, 4, (n,), generator=g)
        crowd = (torch.rand(n, generator=g) < 0.15).long()
        keep = torch.rand(n, generator=g) < 0.8
        boxes = (
            gt[keep] + torch.randn(int(keep.sum()), 4, generator=g) * wh[keep].repeat(1, 2) * 0.15
        )
        det_labels = torch.where(
            torch.rand(len(boxes), generator=g) < 0.85,
            labels[keep],
            torch.randint(1, 4, (len(boxes),), generator=g),
        )
        stray_xy = torch.rand(3, 2, generator=g) * 200
        boxes = torch.cat([boxes, boxes[:1] + 1, torch.cat([stray_xy, stray_xy + 25], 1)])
        boxes = torch.cat(
            [boxes[:, :2].minimum(boxes[:, 2:]), boxes[:, :2].maximum(boxes[:, 2:])], 1
        )
        det_labels = torch.cat([det_labels, det_labels[:1], torch.randint(1, 4, (3,), generator=g)])
        preds.append(
            {"boxes": boxes, "labels": det_labels, "scores": torch.rand(len(boxes), generator=g)}
        )
        truths.append({"boxes": gt, "labels": labels, "iscrowd": crowd})
    metric = MeanAveragePrecision(backend="faster_coco_eval", iou_thresholds=[0.5])
    metric.update(preds, truths)
    expected = float(metric.compute()["map_50"])
    assert error_breakdown(preds, truths)["AP50"] == pytest.approx(expected, abs=1e-6)
