import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, Matcher

from frcnn.boxes import pairwise_iou
from frcnn.model import matching
from frcnn.model.matching import (
    BACKGROUND,
    BETWEEN_THRESHOLDS,
    IGNORED,
    NEGATIVE,
    RPN_SAMPLING,
    match,
    sample,
    training_labels,
)
from frcnn.structures import GroundTruth
from tests.model.helpers import DispatchedOps, random_boxes


def test_thresholds_and_ignore_band():
    iou = torch.tensor([[[0.8, 0.5, 0.2, 0.69]]])
    valid = torch.tensor([[True]])
    matched = match(iou, valid, 0.7, 0.3, allow_low_quality_matches=False)
    assert matched.tolist() == [[0, BETWEEN_THRESHOLDS, BACKGROUND, BETWEEN_THRESHOLDS]]


def test_best_ground_truth_wins():
    iou = torch.tensor([[[0.9, 0.1], [0.75, 0.8]]])
    matched = match(iou, torch.tensor([[True, True]]), 0.7, 0.3, False)
    assert matched.tolist() == [[0, 1]]


def test_low_quality_matches_give_every_box_its_best_candidates():
    # box 1's best IoU (0.4, shared by two candidates) is below 0.7: both still become positive
    iou = torch.tensor([[[0.9, 0.1, 0.1, 0.0], [0.1, 0.4, 0.2, 0.4]]])
    valid = torch.tensor([[True, True]])
    assert match(iou, valid, 0.7, 0.3, False).tolist() == [
        [0, BETWEEN_THRESHOLDS, BACKGROUND, BETWEEN_THRESHOLDS]
    ]
    assert match(iou, valid, 0.7, 0.3, True).tolist() == [[0, 1, BACKGROUND, 1]]


def test_a_box_that_overlaps_nothing_claims_nothing():
    iou = torch.tensor([[[0.9, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    matched = match(iou, torch.tensor([[True, True]]), 0.7, 0.3, True)
    assert matched.tolist() == [[0, BACKGROUND, BACKGROUND]]


def test_padding_and_images_without_boxes_are_background():
    iou = torch.tensor([[[0.9, 0.2]], [[0.9, 0.9]]])
    valid = torch.tensor([[True], [False]])
    assert match(iou, valid, 0.7, 0.3, True).tolist() == [[0, BACKGROUND], [BACKGROUND] * 2]


@pytest.mark.parametrize("low_quality", [False, True])
def test_agrees_with_torchvision_matcher_on_random_ious(low_quality):
    g = torch.Generator().manual_seed(0)
    iou = torch.rand(2, 5, 300, generator=g) ** 3
    valid = torch.tensor([[True] * 5, [True, True, True, False, False]])
    ours = match(iou, valid, 0.7, 0.3, low_quality)
    tv = Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)
    for i in range(2):
        assert torch.equal(ours[i], tv(iou[i][valid[i]]))


@pytest.mark.parametrize("shared", [True, False], ids=["anchors", "per-image boxes"])
def test_a_crowded_batch_is_matched_a_few_images_at_a_time_with_the_same_result(
    shared, monkeypatch
):
    """5 images of 40 boxes (the last two: 25 and none, padded) against 300 candidates: with
    room for two images' IoU at a time, three rounds; the same matches as all at once, and no
    tensor larger than the room."""
    g = torch.Generator().manual_seed(5)
    valid = torch.arange(40) < torch.tensor([[40], [40], [40], [25], [0]])
    gt = GroundTruth(random_boxes(200, generator=g).view(5, 40, 4), torch.ones(5, 40), valid)
    boxes = random_boxes(300 if shared else 1500, generator=g).view(-1, 300, 4).squeeze(0)
    whole = match(pairwise_iou(gt.boxes, boxes), valid, 0.7, 0.3, True)
    assert (whole >= 0).any() and (whole == BACKGROUND).any()
    monkeypatch.setattr(matching, "MATCH_ELEMENTS", 2 * 40 * 300)
    with DispatchedOps() as made:
        assert torch.equal(RPN_SAMPLING.match(gt, boxes, True), whole)
    assert made.largest() <= matching.MATCH_ELEMENTS
    monkeypatch.setattr(matching, "MATCH_ELEMENTS", 1)  # at least one image at a time
    assert torch.equal(RPN_SAMPLING.match(gt, boxes, True), whole)


def test_sampler_sizes_and_fractions():
    labels = torch.full((3, 1000), -1)
    labels[0, :500], labels[0, 500:] = 1, 0  # plenty of both
    labels[1, :10], labels[1, 10:800] = 1, 0  # few positives: negatives fill up
    labels[2, :5], labels[2, 5:20] = 1, 0  # too few of both: take all
    sampled = sample(labels, 256, 0.25, torch.Generator().manual_seed(0))
    pos = (sampled & (labels == 1)).sum(1).tolist()
    neg = (sampled & (labels == 0)).sum(1).tolist()
    assert pos == [64, 10, 5]
    assert neg == [192, 246, 15]
    assert not (sampled & (labels == -1)).any()


def test_sampler_agrees_with_torchvision_counts():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(-1, 2, (4, 2000), generator=g)
    labels[1] = torch.where(labels[1] == 1, 0, labels[1])  # an image without positives
    ours = sample(labels, 256, 0.5, g)
    pos, neg = BalancedPositiveNegativeSampler(256, 0.5)(list(labels))
    for i in range(4):
        assert (ours[i] & (labels[i] == 1)).sum() == pos[i].sum()
        assert (ours[i] & (labels[i] == 0)).sum() == neg[i].sum()


def test_sampler_is_random():
    labels = torch.zeros(1, 1000, dtype=torch.long)
    a = sample(labels, 100, 0.5, torch.Generator().manual_seed(0))
    b = sample(labels, 100, 0.5, torch.Generator().manual_seed(1))
    assert a.sum() == b.sum() == 100
    assert not torch.equal(a, b)


def test_training_labels_of_matches():
    matched = torch.tensor([[0, BACKGROUND, BETWEEN_THRESHOLDS, 1]])
    assert training_labels(matched).tolist() == [[1, NEGATIVE, IGNORED, 1]]
    classes = torch.tensor([[5, 9, 9, 3]])
    assert training_labels(matched, classes).tolist() == [[5, NEGATIVE, IGNORED, 3]]
