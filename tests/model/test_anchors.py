import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from frcnn.model.anchors import AnchorGenerator, cell_anchors


def fpn_shapes(side):
    shapes, s = [], side
    s = (s + 1) // 2  # conv1
    s = (s + 1) // 2  # max-pool: P2
    shapes.append((s, s))
    for _ in range(4):  # P3..P5 (stride-2 convs), P6 (stride-2 subsampling)
        s = (s + 1) // 2
        shapes.append((s, s))
    return shapes


def test_default_set_on_400_pixels_has_40029_anchors():
    anchors = AnchorGenerator()(fpn_shapes(400), "cpu")
    assert [len(a) for a in anchors] == [30000, 7500, 1875, 507, 147]
    assert sum(len(a) for a in anchors) == 40029


def test_cell_anchors_have_the_requested_area_and_ratio():
    cell = cell_anchors((32, 64), (0.5, 1.0, 2.0))
    w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    assert torch.allclose(h / w, torch.tensor([0.5, 0.5, 1.0, 1.0, 2.0, 2.0]), rtol=0.06)
    assert torch.allclose(w * h, torch.tensor([32.0**2, 64**2] * 3), rtol=0.05)
    assert torch.equal(cell[:, :2], -cell[:, 2:])  # centred on the origin


def torchvision_anchors(side):
    shapes = fpn_shapes(side)
    tv = TVAnchorGenerator(((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)
    features = [torch.zeros(1, 1, *s) for s in shapes]
    return tv(ImageList(torch.zeros(1, 3, side, side), [(side, side)]), features)[0]


def test_matches_torchvision_where_every_stride_is_exact():
    for side in (384, 448, 640):
        ours = torch.cat(AnchorGenerator()(fpn_shapes(side), "cpu"))
        assert torch.equal(ours, torchvision_anchors(side))


def test_p6_uses_its_true_stride_where_torchvision_rounds():
    # torchvision derives a level's stride as side // feature size: 416 // 7 = 59 for P6,
    # although P6 samples every other P5 cell, i.e. every 64 pixels. P2..P5 agree.
    ours = AnchorGenerator()(fpn_shapes(416), "cpu")
    theirs = torchvision_anchors(416)
    num_p2_p5 = sum(len(a) for a in ours[:4])
    assert torch.equal(torch.cat(ours[:4]), theirs[:num_p2_p5])
    centres = (ours[4][:, 0] + ours[4][:, 2]) / 2
    assert torch.equal(centres.unique(), torch.arange(7) * 64.0)


def test_order_is_location_major_and_offset_moves_centres():
    gen = AnchorGenerator(sizes=((8,),), aspect_ratios=((1.0, 2.0),), strides=(4,), offset=0.5)
    anchors = gen([(2, 3)], "cpu")[0]
    assert anchors.shape == (2 * 3 * 2, 4)
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    # second location of the first row is one stride to the right; first anchor centre at 2
    torch.testing.assert_close(centres[0], torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(centres[1], torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(centres[2], torch.tensor([6.0, 2.0]))
    torch.testing.assert_close(centres[6], torch.tensor([2.0, 6.0]))


def test_cache_returns_the_same_tensors():
    gen = AnchorGenerator()
    first = gen(fpn_shapes(128), "cpu")
    assert gen(fpn_shapes(128), "cpu") is first
    assert gen(fpn_shapes(160), "cpu") is not first
