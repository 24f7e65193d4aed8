"""Data and anchor statistics on boxes whose anchor IoUs and pooled levels are known."""

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from torchvision.ops import box_iou

from frcnn.evaluation.dataset_stats import best_anchor_iou, dataset_statistics
from frcnn.model import FasterRCNN
from tests.app.helpers import ROOT


@pytest.fixture(scope="module")
def model():
    """The default anchors: sizes 32..512 on P2..P6 (strides 4..64), ratios 0.5, 1, 2."""
    return FasterRCNN(num_classes=3, backbone=dict(depth=18, frozen="none"), fpn_channels=32)


def test_anchor_coverage_and_pooled_levels_of_known_boxes(model):
    anchor = [48.0, 48.0, 80.0, 80.0]  # exactly the 32 px square anchor of P2 centred at (64, 64)
    sliver = [100.0, 10.0, 104.0, 210.0]  # 4 x 200: no anchor shape comes close
    p3_side, p2_side = [0.0, 0.0, 112.0, 112.0], [0.0, 0.0, 111.0, 111.0]
    boxes = [torch.tensor([anchor, sliver]), torch.tensor([p3_side, p2_side]), torch.zeros(0, 4)]
    labels = [torch.tensor([1, 2]), torch.tensor([3, 3]), torch.zeros(0, dtype=torch.long)]
    stats = dataset_statistics(boxes, labels, model, image_size=256)

    # the P2 anchor itself; inside the larger squares: its area over theirs (a rounded
    # ratio-2 anchor of P4 and P6 is a few square pixels smaller, hence rtol)
    expected = torch.tensor([1.0, 32**2 / 64**2, 32**2 / 128**2, 32**2 / 256**2, 32**2 / 512**2])
    assert torch.allclose(stats["best_iou"][0], expected, rtol=1e-3)
    assert (stats["best_iou"][1] < 0.3).all()
    assert stats["fg_iou"] == 0.7
    # FPN eq. 1: a side of 112 is pooled from P3, one of 111 from P2 (as are smaller ones)
    assert stats["pooled_level"].tolist() == [0, 0, 1, 0]
    assert [edge for edge, _ in stats["level_edges"]] == [112, 224, 448]
    assert stats["boxes_per_image"].tolist() == [2, 2, 0]

    rows = {row["side (px)"]: row for row in stats["table"]}
    assert rows["32-64"]["boxes"] == 1 and rows["32-64"]["P2"] == 1.0
    assert rows["32-64"]["P3"] == 0.0 and rows["32-64"]["any level"] == 1.0
    assert rows["16-32"]["boxes"] == 1 and rows["16-32"]["any level"] == 0.0  # the sliver
    assert rows["64-128"]["boxes"] == 2 and rows["64-128"]["pooled from"] == "P2, P3"
    assert sum(row["boxes"] for row in stats["table"]) == 4


def test_coverage_follows_the_anchor_config(model):
    """A 16 px box: no anchor of the default sizes reaches it; `anchors=small`'s 16 px do."""
    box = [torch.tensor([[56.0, 56.0, 72.0, 72.0]])]
    labels = [torch.tensor([1])]
    default = dataset_statistics(box, labels, model, image_size=128)
    small = FasterRCNN(
        num_classes=3,
        backbone=dict(depth=18, frozen="none"),
        fpn_channels=32,
        anchors=dict(sizes=((16,), (32,), (64,), (128,), (256,))),
    )
    assert default["best_iou"].max() == pytest.approx(16**2 / 32**2, rel=0.02)  # < fg
    assert dataset_statistics(box, labels, small, image_size=128)["best_iou"][0, 0] == 1.0


@pytest.mark.parametrize("anchors, offset", [("fpn", 0.0), ("dense", 0.0), ("fpn", 0.5)])
def test_the_best_anchor_iou_equals_the_brute_force_over_every_anchor(anchors, offset):
    """Random boxes, some beyond the image's edges, against all anchors of every level."""
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        settings = dict(compose("train", [f"anchors={anchors}"]).model.anchors, offset=offset)
    generator = FasterRCNN(
        num_classes=3, backbone=dict(depth=18, frozen="none"), fpn_channels=32, anchors=settings
    ).anchor_generator
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(300, 2, generator=g) * 420 - 30
    boxes = torch.cat([xy, xy + 2 + torch.rand(300, 2, generator=g) ** 2 * 400], 1)
    shapes = [(math.ceil(400 / s),) * 2 for s in generator.strides]
    every = generator(shapes, "cpu")
    expected = torch.stack([box_iou(boxes, level).amax(1) for level in every], 1)
    assert torch.allclose(best_anchor_iou(boxes, generator, 400), expected, atol=1e-6)
