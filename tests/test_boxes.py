import math
import shutil

import pytest
import torch
from packaging.version import Version
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder
from torchvision.ops import box_iou, clip_boxes_to_image, nms

from frcnn.boxes import (
    TRITON_FOR_NMS,
    BoxCoder,
    clip_boxes,
    nms_in_rows,
    pairwise_iou,
    to_original_pixels,
    top_k_per_image,
    triton_missing,
)
from tests.model.helpers import DispatchedOps, random_boxes


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_round_trip(weights):
    g = torch.Generator().manual_seed(0)
    coder = BoxCoder(weights)
    boxes, reference = random_boxes(100, generator=g), random_boxes(100, generator=g)
    deltas = coder.encode(boxes, reference)
    torch.testing.assert_close(coder.decode(deltas, reference), boxes, rtol=0, atol=1e-3)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_matches_torchvision_box_coder(weights):
    g = torch.Generator().manual_seed(1)
    boxes, reference = random_boxes(50, generator=g), random_boxes(50, generator=g)
    ours, theirs = BoxCoder(weights), TVBoxCoder(weights)
    torch.testing.assert_close(
        ours.encode(boxes, reference), theirs.encode_single(boxes, reference)
    )
    deltas = torch.randn(50, 4, generator=g)
    torch.testing.assert_close(
        ours.decode(deltas, reference), theirs.decode_single(deltas, reference)
    )


def test_hand_computed_deltas():
    reference = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    box = torch.tensor([[5.0, 0.0, 15.0, 40.0]])  # centre moves (+5, +10), height doubles
    deltas = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(box, reference)
    torch.testing.assert_close(deltas, torch.tensor([[5.0, 5.0, 0.0, 5 * math.log(2)]]))


def test_decode_clamps_the_log_scale():
    coder = BoxCoder()
    reference = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    huge = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), reference)
    width = huge[0, 2] - huge[0, 0]
    torch.testing.assert_close(width, torch.tensor(10 * 1000 / 16.0))


def test_decode_broadcasts_class_specific_deltas():
    g = torch.Generator().manual_seed(2)
    reference = random_boxes(6, generator=g)
    deltas = torch.randn(6, 3, 4, generator=g)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    out = coder.decode(deltas, reference[:, None])
    for c in range(3):
        torch.testing.assert_close(out[:, c], coder.decode(deltas[:, c], reference))


def test_clip_matches_torchvision():
    boxes = torch.tensor([[-5.0, -3.0, 50.0, 120.0], [10.0, 10.0, 20.0, 20.0]])
    torch.testing.assert_close(clip_boxes(boxes, 100, 40), clip_boxes_to_image(boxes, (100, 40)))


def test_pairwise_iou_is_box_iou_per_image_and_makes_nothing_larger_than_its_result():
    g = torch.Generator().manual_seed(3)
    a = torch.stack([random_boxes(7, generator=g) for _ in range(3)])
    b = torch.stack([random_boxes(11, generator=g) for _ in range(3)])
    with DispatchedOps() as made:
        iou = pairwise_iou(a, b)
    assert iou.shape == (3, 7, 11)
    for i in range(3):
        assert torch.equal(iou[i], box_iou(a[i], b[i]))
    # the ground truth against every anchor is a training step's largest tensor: no
    # (B, G, A, 2) corner pairs on the way
    assert made.largest() == iou.numel()
    # boxes shared by every image (the anchors) broadcast
    assert torch.equal(pairwise_iou(a, b[0]), pairwise_iou(a, b[0].expand(3, -1, -1)))


@pytest.mark.parametrize("calls", ["image", "batch"])
def test_nms_in_rows_equals_torchvision_nms_row_by_row(calls):
    """3 images of 2 rows: one NMS call per image, or one for the batch."""
    g = torch.Generator().manual_seed(4)
    rows, per_row = 6, 200
    boxes = random_boxes(rows * per_row, generator=g).view(rows, per_row, 4)
    scores = torch.rand(rows, per_row, generator=g)
    candidate = torch.rand(rows, per_row, generator=g) < 0.7
    candidate[2] = False  # a row without candidates keeps nothing
    kept = nms_in_rows(boxes, scores, candidate, 0.5, images=3, calls=calls)
    assert kept.shape == (rows, per_row) and not kept[2].any()
    assert not (kept & ~candidate).any()
    for r in range(rows):
        columns = candidate[r].nonzero().squeeze(1)
        expected = torch.zeros(per_row, dtype=torch.bool)
        expected[columns[nms(boxes[r, columns], scores[r, columns], 0.5)]] = True
        assert torch.equal(kept[r], expected)


def test_top_k_per_image_keeps_the_best_kept_entries_and_pads():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.3, 0.2, 0.8, 0.6], [0.5, 0.4, 0.3, 0.2]])
    kept = torch.tensor([[1, 1, 0, 1], [0, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    idx, valid = top_k_per_image(scores, kept, 3)
    assert torch.equal(valid, torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]], dtype=torch.bool))
    assert idx[0].tolist() == [1, 3, 0] and idx[1, 0] == 2
    # more slots than entries: padded to k, the padding invalid
    idx, valid = top_k_per_image(scores, kept, 6)
    assert idx.shape == valid.shape == (3, 6) and valid.sum(1).tolist() == [3, 1, 0]


@pytest.mark.parametrize("calls", ["image", "batch"])
def test_an_images_detections_do_not_depend_on_its_place_in_the_batch(calls):
    """Batch 16 x 80 classes: NMS shifts the last row's boxes by ~1.7e5 pixels, where float32
    keeps 1/64 px. A box pair whose IoU lies that close to the threshold must be decided as
    it is for the first image."""
    num_rows, thresh = 16 * 80, 0.5

    def iou_after_offset(pair, dtype):
        offset = num_rows * (pair.max() + 1)
        shifted = (pair.to(dtype) + offset.to(dtype)).double()
        return box_iou(shifted[:1], shifted[1:]).item()

    # a pair just across the threshold, where float32 offsets decide the other way
    for shift in torch.linspace(33.2, 33.5, 301, dtype=torch.float64).tolist():
        pair = torch.tensor([[0.0, 0.0, 100.0, 100.0], [shift, 0.0, 100.0 + shift, 100.0]])
        exact = box_iou(pair.double()[:1], pair.double()[1:]).item()
        if (exact > thresh) != (iou_after_offset(pair, torch.float32) > thresh):
            break
    else:
        pytest.fail("no pair found that float32 offsets misjudge")
    boxes = pair.expand(num_rows, 2, 4)
    scores = torch.tensor([0.9, 0.8]).expand(num_rows, 2)
    kept = []
    for row in (0, num_rows - 1):
        candidate = torch.zeros(num_rows, 2, dtype=torch.bool)
        candidate[row] = True
        survivors = nms_in_rows(boxes, scores, candidate, thresh, images=16, calls=calls)
        kept.append(survivors[row].tolist())
    assert kept[0] == kept[1] == ([True, False] if exact > thresh else [True, True])


def test_boxes_map_back_to_original_pixels_and_stay_inside():
    boxes = torch.tensor([[40.0, 20.0, 120.0, 100.0], [100.0, 20.0, 180.0, 40.0]])
    original = to_original_pixels(boxes, torch.tensor([2.0, 4.0]), (30, 80))
    expected = torch.tensor([[20.0, 5.0, 60.0, 25.0], [50.0, 5.0, 80.0, 10.0]])
    torch.testing.assert_close(original, expected)


def test_triton_nms_needs_a_c_compiler_for_the_launcher_triton_builds(monkeypatch):
    triton = pytest.importorskip("triton")
    if Version(triton.__version__) < Version(TRITON_FOR_NMS):
        pytest.skip(f"triton {triton.__version__}: missing for an older reason")
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert triton_missing() == (
        "no C compiler (gcc or clang, or $CC), which Triton needs to build its launcher"
    )
    monkeypatch.setenv("CC", "/opt/bin/cc")  # Triton's first choice
    assert triton_missing() is None
