import pytest
import torch
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.faster_rcnn import TwoMLPHead as TVTwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads
from torchvision.ops import MultiScaleRoIAlign

from frcnn.model.matching import ROI_SAMPLING, Sampling
from frcnn.model.roi_heads import RoIHeads
from frcnn.structures import Proposals, pad_targets
from tests.model.helpers import CHANNELS, SIDE, features, random_boxes, sorted_rows

HIDDEN, CLASSES = 32, 4


def test_sampling_ratio_must_be_fixed():
    with pytest.raises(ValueError, match="sampling_ratio"):
        RoIHeads(CLASSES, CHANNELS, sampling_ratio=0)


def build_pair(**settings):
    sampling = Sampling.take(dict(settings), "roi_heads", ROI_SAMPLING)
    others = {k: v for k, v in settings.items() if k not in Sampling.KEYS}
    ours = RoIHeads(CLASSES, CHANNELS, representation_size=HIDDEN, sampling=sampling, **others)
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

    losses = ours.losses(
        feats, Proposals(torch.stack(proposals), valid), pad_targets(targets, "cpu")
    )
    tv.train()
    _, tv_losses = tv(
        {str(i): f for i, f in enumerate(feats)}, proposals, [(SIDE, SIDE)] * 2, targets
    )
    torch.testing.assert_close(losses["roi_cls"], tv_losses["loss_classifier"])
    torch.testing.assert_close(losses["roi_box"], tv_losses["loss_box_reg"])


def test_the_fixed_shape_heads_compiled_by_inductor_give_eagers_losses_and_gradients():
    """`module.compile_scope=fixed_shapes` on a CPU, for the box head and predictor (inductor's
    C++ code: about 20 s here; the backbone's would take minutes): the same losses and
    gradients as without compiling, within float32 reassociation."""
    eager, _ = build_pair(batch_size_per_image=64)
    compiled, _ = build_pair(batch_size_per_image=64)
    compiled.load_state_dict(eager.state_dict())
    compiled.box_head.compile(backend="inductor")
    compiled.predictor.compile(backend="inductor")
    g = torch.Generator().manual_seed(2)
    feats = features(g)
    gt_boxes = [random_boxes(3, 150, g), random_boxes(2, 150, g)]
    targets = pad_targets(
        [{"boxes": b, "labels": torch.ones(len(b), dtype=torch.long)} for b in gt_boxes], "cpu"
    )
    proposals = torch.stack([torch.cat([b, random_boxes(60, 200, g)]).clamp(0, SIDE)[:60]
                             for b in gt_boxes])  # fmt: skip
    results = []
    for heads in (eager, compiled):
        torch.manual_seed(3)  # the same sample of proposals
        losses = heads.losses(
            feats, Proposals(proposals, torch.ones(2, 60, dtype=torch.bool)), targets
        )
        sum(losses.values()).backward()
        results.append(
            (losses, heads.box_head.fc6.weight.grad, heads.predictor.bbox_pred.weight.grad)
        )
    (losses, *grads), (compiled_losses, *compiled_grads) = results
    torch.testing.assert_close(compiled_losses, losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled_grads, grads, rtol=1e-4, atol=1e-6)


def test_sampling_keeps_a_fixed_number_of_rows_and_the_fractions():
    sampling = Sampling(0.5, 0.5, 64, 0.25)
    heads = RoIHeads(CLASSES, CHANNELS, representation_size=HIDDEN, sampling=sampling)
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
        Proposals(proposals, valid), pad_targets(targets, "cpu")
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
        features(g),
        Proposals(proposals, torch.ones(2, 50, dtype=torch.bool)),
        pad_targets(empty, "cpu"),
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
    detections = ours.detect(feats, Proposals(proposals, valid), torch.tensor(sizes)).per_image()
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
