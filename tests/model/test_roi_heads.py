import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.faster_rcnn import TwoMLPHead as TVTwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads
from torchvision.ops import MultiScaleRoIAlign, roi_align

from frcnn.model.faster_rcnn import pad_targets
from frcnn.model.roi_heads import RoIHeads, assign_levels, multiscale_roi_align
from tests.model.helpers import random_boxes, sorted_rows

STRIDES = (4, 8, 16, 32)
SIDE = 256
CHANNELS, HIDDEN, CLASSES = 8, 32, 4


def features(generator, batch=2):
    return [
        torch.randn(batch, CHANNELS, SIDE // s, SIDE // s, generator=generator) for s in STRIDES
    ]


def square(side):
    return torch.tensor([[10.0, 10.0, 10.0 + side, 10.0 + side]])


@pytest.mark.parametrize(
    ("side", "level"), [(224, 2), (223, 1), (112, 1), (111, 0), (448, 3), (2000, 3), (5, 0)]
)
def test_level_assignment_follows_the_fpn_rule(side, level):
    # P4 (index 2) for a 224-pixel box, one level per factor of two, clamped to P2..P5
    assert assign_levels(square(side), STRIDES).item() == level


def test_multiscale_roi_align_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    feats = features(g)
    boxes = torch.stack([random_boxes(40, 200, g), random_boxes(40, 200, g)])
    image_index = torch.arange(2).repeat_interleave(40)
    ours = multiscale_roi_align(feats, boxes.flatten(0, 1), image_index, STRIDES, 7, 2)
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    theirs = pooler({str(i): f for i, f in enumerate(feats)}, list(boxes), [(SIDE, SIDE)] * 2)
    torch.testing.assert_close(ours, theirs)


def edge_cases(side):
    """Boxes torchvision's bilinear rules treat specially, on a map of `side` input pixels."""
    return torch.tensor(
        [
            [-30.0, -30.0, 20.0, 20.0],  # partly outside, top-left
            [side - 20.0, side - 20.0, side + 40.0, side + 40.0],  # partly outside, bottom-right
            [side + 50.0, 10.0, side + 90.0, 60.0],  # entirely beyond the right edge
            [5.0, 5.0, 5.5, 5.2],  # smaller than a cell (sides are clamped to one cell)
            [0.0, 0.0, side, side],  # the whole map
            [3.0, side - 1.0, 40.0, side],  # along the bottom edge
        ]
    )


DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("output_size", "sampling_ratio"), [(7, 2), (7, 1), (5, 3)])
def test_roi_align_matches_torchvision_values_and_gradients(output_size, sampling_ratio, device):
    g = torch.Generator().manual_seed(5)
    stride, side = 8, 96
    feature = torch.randn(2, CHANNELS, side // stride, side // stride, generator=g)
    boxes = torch.cat([edge_cases(side), random_boxes(20, side, g)])
    image_index = torch.arange(len(boxes)) % 2
    upstream = torch.randn(len(boxes), CHANNELS, output_size, output_size, generator=g)
    feature, boxes, image_index, upstream = (
        t.to(device) for t in (feature, boxes, image_index, upstream)
    )
    feature.requires_grad_(True)
    rois = torch.cat([image_index[:, None].float(), boxes], 1)

    ours = multiscale_roi_align(
        [feature], boxes, image_index, (stride,), output_size, sampling_ratio
    )
    (grad_ours,) = torch.autograd.grad(ours, feature, upstream)
    theirs = roi_align(feature, rois, output_size, 1 / stride, sampling_ratio, aligned=False)
    (grad_theirs,) = torch.autograd.grad(theirs, feature, upstream)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grad_ours, grad_theirs)


def test_roi_align_never_waits_for_the_device():
    # no op whose output size depends on the data (each would be a host sync on a GPU)
    class OpNames(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            masks = [a for a in args if isinstance(a, list | tuple)]
            bool_index = any(getattr(i, "dtype", None) == torch.bool for m in masks for i in m)
            names.append(func._schema.name + (" with a boolean mask" if bool_index else ""))
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(7)
    feats, boxes = features(g), random_boxes(50, 200, g)
    names = []
    with OpNames():
        multiscale_roi_align(feats, boxes, torch.arange(50) % 2, STRIDES, 7, 2)
    assert any("embedding_bag" in name for name in names)
    waiting = ("nonzero", "masked_select", "_local_scalar_dense", "boolean mask", "unique")
    assert not [name for name in names if any(w in name for w in waiting)]


def test_roi_align_pools_in_float32_and_takes_no_boxes():
    g = torch.Generator().manual_seed(6)
    feats = [f.bfloat16() for f in features(g)]
    boxes = random_boxes(10, 200, g)
    pooled = multiscale_roi_align(feats, boxes, torch.zeros(10, dtype=torch.long), STRIDES, 7, 2)
    expected = multiscale_roi_align(
        [f.float() for f in feats], boxes, torch.zeros(10, dtype=torch.long), STRIDES, 7, 2
    )
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, expected)
    empty = multiscale_roi_align(
        feats, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), STRIDES, 7, 2
    )
    assert empty.shape == (0, CHANNELS, 7, 7)


def test_sampling_ratio_must_be_fixed():
    with pytest.raises(ValueError, match="sampling_ratio"):
        RoIHeads(CLASSES, CHANNELS, sampling_ratio=0)


def build_pair(**settings):
    ours = RoIHeads(CLASSES, CHANNELS, representation_size=HIDDEN, **settings)
    tv = TVRoIHeads(
        MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2),
        TVTwoMLPHead(CHANNELS * 49, HIDDEN),
        FastRCNNPredictor(HIDDEN, CLASSES + 1),
        fg_iou_thresh=0.5,
        bg_iou_thresh=0.5,
        batch_size_per_image=settings.get("batch_size_per_image", 512),
        positive_fraction=0.25,
        bbox_reg_weights=None,
        score_thresh=settings.get("score_thresh", 0.05),
        nms_thresh=0.5,
        detections_per_img=settings.get("detections_per_img", 100),
    )
    tv.box_head.load_state_dict(ours.box_head.state_dict())
    tv.box_predictor.load_state_dict(ours.predictor.state_dict())
    return ours, tv


def test_losses_match_torchvision_when_every_proposal_is_sampled():
    ours, tv = build_pair(batch_size_per_image=100_000)
    g = torch.Generator().manual_seed(1)
    feats = features(g)
    gt_boxes = [random_boxes(3, 150, g), random_boxes(2, 150, g)]
    targets = [
        {"boxes": b, "labels": torch.randint(1, CLASSES + 1, (len(b),), generator=g)}
        for b in gt_boxes
    ]
    # proposals near the ground truth, so that there are positives, and random ones
    proposals = [
        torch.cat([b + torch.randn(b.shape, generator=g) * 8, random_boxes(63 - len(b), 200, g)])
        for b in gt_boxes
    ]
    proposals = [p.clamp(0, SIDE) for p in proposals]
    valid = torch.ones(2, 63, dtype=torch.bool)

    losses = ours.losses(feats, torch.stack(proposals), valid, pad_targets(targets, "cpu"))
    tv.train()
    _, tv_losses = tv(
        {str(i): f for i, f in enumerate(feats)}, proposals, [(SIDE, SIDE)] * 2, targets
    )
    torch.testing.assert_close(losses["roi_cls"], tv_losses["loss_classifier"])
    torch.testing.assert_close(losses["roi_box"], tv_losses["loss_box_reg"])


def test_sampling_keeps_a_fixed_number_of_rows_and_the_fractions():
    heads = RoIHeads(CLASSES, CHANNELS, representation_size=HIDDEN, batch_size_per_image=64)
    g = torch.Generator().manual_seed(2)
    gt = random_boxes(2, 150, g)
    targets = [
        {"boxes": gt, "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    proposals = torch.stack([random_boxes(300, 200, g), random_boxes(300, 200, g)])
    proposals[0, :100] = gt[0] + torch.randn(100, 4, generator=g)  # 100 positives for image 0
    valid = torch.ones(2, 300, dtype=torch.bool)
    valid[1, 30:] = False  # image 1 has only 30 proposals
    boxes, labels, targets_, sampled = heads.sample_proposals(
        proposals, valid, pad_targets(targets, "cpu")
    )
    assert boxes.shape == (2, 64, 4) and labels.shape == sampled.shape == (2, 64)
    assert ((labels[0] > 0) & sampled[0]).sum() == 16  # 25% of 64
    assert sampled[0].sum() == 64
    assert sampled[1].sum() == 30 and (labels[1][sampled[1]] == 0).all()
    assert torch.isfinite(targets_).all()


def test_losses_with_empty_targets_are_finite():
    heads = RoIHeads(CLASSES, CHANNELS, representation_size=HIDDEN)
    g = torch.Generator().manual_seed(3)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    proposals = torch.stack([random_boxes(50, 200, g), random_boxes(50, 200, g)])
    losses = heads.losses(
        features(g), proposals, torch.ones(2, 50, dtype=torch.bool), pad_targets(empty, "cpu")
    )
    assert torch.isfinite(losses["roi_cls"]) and losses["roi_cls"] > 0
    assert losses["roi_box"] == 0


def test_detections_match_torchvision_post_processing():
    ours, tv = build_pair(score_thresh=0.05, detections_per_img=30)
    g = torch.Generator().manual_seed(4)
    torch.nn.init.normal_(ours.predictor.cls_score.weight, std=0.5, generator=g)
    torch.nn.init.normal_(ours.predictor.bbox_pred.weight, std=0.1, generator=g)
    tv.box_predictor.load_state_dict(ours.predictor.state_dict())
    feats = features(g)
    proposals = torch.stack([random_boxes(80, 200, g), random_boxes(80, 200, g)])
    valid = torch.ones(2, 80, dtype=torch.bool)
    valid[1, 50:] = False  # padding rows never become detections
    # the second image is letterboxed: boxes are clipped to its own content, as torchvision's
    sizes = [(SIDE, SIDE), (SIDE - 60, SIDE - 100)]
    detections = ours.detect(feats, proposals, valid, torch.tensor(sizes))
    tv.eval()
    expected, _ = tv(
        {str(i): f for i, f in enumerate(feats)}, [proposals[0], proposals[1, :50]], sizes
    )
    for det, exp in zip(detections, expected, strict=True):
        assert len(det["boxes"]) == len(exp["boxes"]) > 0
        ours_rows = torch.cat(
            [det["boxes"], det["scores"][:, None], det["labels"][:, None].float()], 1
        )
        tv_rows = torch.cat(
            [exp["boxes"], exp["scores"][:, None], exp["labels"][:, None].float()], 1
        )
        torch.testing.assert_close(sorted_rows(ours_rows), sorted_rows(tv_rows))
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        assert det["labels"].min() >= 1 and det["labels"].max() <= CLASSES
