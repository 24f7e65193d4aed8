"""The confusion matrix on hand-built scenes whose every count is known."""

import torch

from frcnn.evaluation.confusion import classes_by_errors, confusion_matrix, normalised

BG = 3  # row / column of the background with 3 classes


def scene(pred_boxes, pred_labels, scores, gt_boxes, gt_labels, crowd=()):
    return (
        {
            "boxes": torch.tensor(pred_boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(pred_labels, dtype=torch.long),
            "scores": torch.tensor(scores, dtype=torch.float32),
        },
        {
            "boxes": torch.tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(gt_labels, dtype=torch.long),
            "iscrowd": torch.tensor([int(i in crowd) for i in range(len(gt_labels))]),
        },
    )


def test_each_kind_of_outcome_lands_in_its_cell():
    a, b, c = [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]
    images = [
        # a class-1 box found as class 1, a class-2 box found as class 3
        scene([a, b], [1, 3], [0.9, 0.8], [a, b], [1, 2]),
        # a class-1 box found only below the score threshold: missed; a stray class-2
        # detection: a false positive
        scene([a, c], [1, 2], [0.3, 0.7], [a], [1]),
        # two detections of one class-3 box: the higher-scoring one matches (as class 1), the
        # other is a false positive of class 3
        scene([b, [20, 20, 30, 31]], [3, 1], [0.6, 0.95], [b], [3]),
        # a detection on a crowd region counts nowhere; the crowd is no box to miss
        scene([[60, 60, 70, 70]], [2], [0.9], [[55, 55, 90, 90]], [2], crowd=(0,)),
        # a poorly placed detection (IoU 0.4): the box is missed and the detection is a
        # false positive
        scene([[0, 0, 10, 25]], [1], [0.9], [a], [1]),
    ]
    matrix = confusion_matrix([p for p, _ in images], [t for _, t in images], 3, score=0.5)
    expected = torch.zeros(4, 4, dtype=torch.int64)
    expected[0, 0] = 1  # image 1
    expected[1, 2] = 1
    expected[0, BG] = 1  # image 2
    expected[BG, 1] = 1
    expected[2, 0] = 1  # image 3
    expected[BG, 2] = 1
    expected[0, BG] += 1  # image 5
    expected[BG, 0] = 1
    assert torch.equal(matrix, expected)
    # every box is counted once in its row: rows sum to the boxes of each class
    assert matrix[:BG].sum(1).tolist() == [3, 1, 1]


def test_the_rows_are_normalised_to_shares():
    matrix = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 2, 0]])
    shares = normalised(matrix)
    assert torch.allclose(shares[0], torch.tensor([0.75, 0.25, 0.0], dtype=torch.float64))
    assert shares[1].sum() == 0  # a class without boxes
    assert torch.allclose(shares.sum(1)[[0, 2]], torch.ones(2, dtype=torch.float64))


def test_an_image_without_ground_truth_or_detections():
    empty = scene([], [], [], [], [])
    only_fp = scene([[0, 0, 5, 5]], [2], [0.9], [], [])
    matrix = confusion_matrix([empty[0], only_fp[0]], [empty[1], only_fp[1]], 3)
    assert matrix.sum() == 1 and matrix[BG, 1] == 1


def test_classes_are_ranked_by_their_errors_then_their_boxes():
    matrix = torch.tensor(
        [
            [5, 0, 0, 0, 1],  # class 1: 1 missed; 2 of class 3's boxes detected as it: 3 errors
            [0, 0, 0, 0, 0],  # class 2: no box, no detection
            [2, 0, 3, 0, 0],  # class 3: 2 taken for class 1, 1 false positive below: 3 errors
            [0, 0, 0, 4, 0],  # class 4: all right
            [0, 0, 1, 0, 0],  # background
        ]
    )
    # classes 1 and 3 tie on errors: class 1 has more boxes (6 to 5)
    assert classes_by_errors(matrix) == [0, 2, 3]
    assert classes_by_errors(torch.zeros(4, 4, dtype=torch.long)) == []
