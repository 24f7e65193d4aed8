import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.rpn import RPNHead as TVRPNHead

from frcnn.model.anchors import AnchorGenerator
from frcnn.model.matching import RPN_SAMPLING, Sampling
from frcnn.model.rpn import RPN
from frcnn.structures import pad_targets
from tests.model.helpers import random_boxes, sorted_rows

SHAPES = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]  # a 128-pixel image
SIDE = 128


def build_pair(**counts):
    """Our RPN and torchvision's with the same head weights and settings."""
    sampling = Sampling.take(dict(counts), "rpn", RPN_SAMPLING)
    ours = RPN(
        8, 3, sampling=sampling, **{k: v for k, v in counts.items() if k not in Sampling.KEYS}
    )
    tv = RegionProposalNetwork(
        TVAnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5),
        TVRPNHead(8, 3),
        fg_iou_thresh=0.7,
        bg_iou_thresh=0.3,
        batch_size_per_image=counts.get("batch_size_per_image", 256),
        positive_fraction=counts.get("positive_fraction", 0.5),
        pre_nms_top_n={
            "training": counts.get("pre_nms_top_n_train", 2000),
            "testing": counts.get("pre_nms_top_n_test", 1000),
        },
        post_nms_top_n={
            "training": counts.get("post_nms_top_n_train", 2000),
            "testing": counts.get("post_nms_top_n_test", 1000),
        },
        nms_thresh=0.7,
    )
    tv.head.conv[0][0].load_state_dict(ours.head.conv.state_dict())
    tv.head.cls_logits.load_state_dict(ours.head.objectness.state_dict())
    tv.head.bbox_pred.load_state_dict(ours.head.deltas.state_dict())
    return ours, tv


def inputs(generator):
    features = [torch.randn(2, 8, h, w, generator=generator) for h, w in SHAPES]
    anchors = AnchorGenerator()(SHAPES, "cpu")
    return features, anchors


def test_head_output_order_matches_the_anchors():
    rpn = RPN(8, 3)
    features, anchors = inputs(torch.Generator().manual_seed(0))
    logits, deltas = rpn.head(features)
    assert logits.shape == (2, sum(len(a) for a in anchors))
    assert deltas.shape == (2, logits.shape[1], 4)
    # anchor 5 of P2 is anchor 2 (ratio 2) at row 0, column 1
    direct = rpn.head.objectness(torch.relu(rpn.head.conv(features[0])))
    assert logits[1, 5] == direct[1, 2, 0, 1]


def torchvision_proposals(sizes):
    """(ours, torchvision's) proposals for one random input; sizes: (height, width) per image."""
    torch.manual_seed(0)
    ours, tv = build_pair(pre_nms_top_n_test=300, post_nms_top_n_test=150)
    ours.eval(), tv.eval()
    g = torch.Generator().manual_seed(1)
    features, anchors = inputs(g)
    # large random weights so that objectness and deltas vary a lot
    for conv in (ours.head.objectness, ours.head.deltas, tv.head.cls_logits, tv.head.bbox_pred):
        torch.nn.init.normal_(conv.weight, std=0.3, generator=torch.Generator().manual_seed(2))
    (proposals, valid), losses = ours(features, anchors, torch.tensor(sizes))
    assert losses == {}
    from torchvision.models.detection.image_list import ImageList

    images = ImageList(torch.zeros(2, 3, SIDE, SIDE), sizes)
    expected, _ = tv(images, {str(i): f for i, f in enumerate(features)})
    assert proposals.shape == (2, 150, 4)
    return [p[v] for p, v in zip(proposals, valid, strict=True)], expected


def test_proposals_match_torchvision_in_order():
    proposals, expected = torchvision_proposals([(SIDE, SIDE)] * 2)
    for ours, theirs in zip(proposals, expected, strict=True):
        torch.testing.assert_close(ours, theirs)
        assert (ours >= 0).all() and (ours <= SIDE).all()


def test_proposals_of_letterboxed_images_lie_in_their_content_as_torchvision():
    sizes = [(SIDE, SIDE), (SIDE - 40, SIDE - 72)]
    proposals, expected = torchvision_proposals(sizes)
    for ours, theirs, (height, width) in zip(proposals, expected, sizes, strict=True):
        # the same set (clipping ties some scores, whose order neither defines)
        torch.testing.assert_close(sorted_rows(ours), sorted_rows(theirs))
        assert (ours[:, 2] <= width).all() and (ours[:, 3] <= height).all()


def test_train_and_test_counts_differ():
    rpn = RPN(8, 3, post_nms_top_n_train=40, post_nms_top_n_test=20)
    features, anchors = inputs(torch.Generator().manual_seed(3))
    sizes = torch.tensor([[SIDE, SIDE]] * 2)
    assert rpn.train()(features, anchors, sizes)[0].boxes.shape == (2, 40, 4)
    assert rpn.eval()(features, anchors, sizes)[0].boxes.shape == (2, 20, 4)


def test_losses_match_torchvision_when_every_anchor_is_sampled():
    # a sample as large as the anchor set takes every positive and negative: no randomness
    ours, tv = build_pair(batch_size_per_image=100_000, positive_fraction=0.5)
    g = torch.Generator().manual_seed(4)
    features, anchors = inputs(g)
    targets = [
        {"boxes": random_boxes(3, 100, g), "labels": torch.tensor([1, 2, 3])},
        {"boxes": random_boxes(1, 100, g), "labels": torch.tensor([1])},
    ]
    _, losses = ours.train()(
        features, anchors, torch.tensor([[SIDE, SIDE]] * 2), pad_targets(targets, "cpu")
    )

    all_anchors = torch.cat(anchors)
    labels, matched = tv.assign_targets_to_anchors([all_anchors] * 2, targets)
    regression = tv.box_coder.encode(matched, [all_anchors] * 2)
    logits, deltas = ours.head(features)
    rpn_cls, rpn_box = tv.compute_loss(
        logits.reshape(-1, 1), deltas.reshape(-1, 4), labels, regression
    )
    torch.testing.assert_close(losses["rpn_cls"], rpn_cls)
    torch.testing.assert_close(losses["rpn_box"], rpn_box)


def test_losses_on_images_without_boxes_are_finite_and_only_objectness():
    rpn = RPN(8, 3).train()
    features, anchors = inputs(torch.Generator().manual_seed(5))
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    _, losses = rpn(features, anchors, torch.tensor([[SIDE, SIDE]] * 2), pad_targets(empty, "cpu"))
    assert torch.isfinite(losses["rpn_cls"]) and losses["rpn_cls"] > 0
    assert losses["rpn_box"] == 0
    (losses["rpn_cls"] + losses["rpn_box"]).backward()
    assert torch.isfinite(rpn.head.conv.weight.grad).all()


def test_no_proposal_surviving_in_the_whole_batch_is_legal():
    """A diverged model (NaN outputs) or min_size above every box leaves no proposal at all:
    the RPN returns only padding, marked invalid, and its losses stay defined."""
    rpn = RPN(8, 3, min_size=1000.0).eval()
    features, anchors = inputs(torch.Generator().manual_seed(6))
    (proposals, valid), _ = rpn(features, anchors, torch.tensor([[SIDE, SIDE]] * 2))
    assert not valid.any() and torch.isfinite(proposals).all()
    rpn.train()
    with torch.no_grad():
        rpn.head.conv.weight.fill_(float("nan"))
    empty = [{"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1])}] * 2
    (proposals, valid), losses = rpn(
        features, anchors, torch.tensor([[SIDE, SIDE]] * 2), pad_targets(empty, "cpu")
    )
    assert not valid.any() and set(losses) == {"rpn_cls", "rpn_box"}
