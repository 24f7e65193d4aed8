"""Flip test-time augmentation: the mirror image and back, the merge, a trained detector."""

import pytest
import torch
from torchvision.ops import batched_nms

from frcnn.data import collate
from frcnn.model.tta import merge, mirror, unmirror
from frcnn.structures import Detections


def test_mirror_flips_each_content_alone_and_unmirror_brings_its_boxes_back():
    images = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    sizes = torch.tensor([[8, 8], [6, 5]])  # the second: content 6 x 5, padding beyond
    images[0, :, 2:4, 1:3] = 255  # a box [1, 2, 3, 4] (x0, y0, x1, y1)
    images[1, :, 1:5, 0:2] = 255  # a box [0, 1, 2, 5] in a 5 px wide content
    images[1, :, :, 5:] = 7  # padding: must stay
    mirrored = mirror(images, sizes)
    assert torch.equal(mirror(mirrored, sizes), images)
    assert torch.equal(mirrored[1, :, :, 5:], images[1, :, :, 5:])
    for b, (x0, y0, x1, y1) in enumerate([(1, 2, 3, 4), (0, 1, 2, 5)]):
        width = int(sizes[b, 1])
        # the object now covers columns width - x1 .. width - x0
        assert mirrored[b, 0, y0:y1, width - x1 : width - x0].eq(255).all()
        assert mirrored[b, 0].eq(255).sum() == (x1 - x0) * (y1 - y0)
        found = torch.tensor([[[width - x1, y0, width - x0, y1]]], dtype=torch.float32)
        assert unmirror(found, sizes[b : b + 1]).tolist() == [[[x0, y0, x1, y1]]]


def random_detections(g, batch, k, classes):
    counts = torch.randint(0, k + 1, (batch,), generator=g)
    valid = torch.arange(k)[None] < counts[:, None]
    xy = torch.rand(batch, k, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(batch, k, 2, generator=g) * 20], -1)
    scores = torch.rand(batch, k, generator=g).sort(1, descending=True).values
    labels = torch.randint(1, classes + 1, (batch, k), generator=g)
    return Detections(
        torch.where(valid[..., None], boxes, 0.0),
        torch.where(valid, scores, 0.0),
        torch.where(valid, labels, 0),
        valid,
    )


@pytest.mark.parametrize("calls", ["image", "batch"])
def test_merge_is_torchvisions_batched_nms_over_both_sets_then_the_best_k(calls):
    g = torch.Generator().manual_seed(0)
    first, second = random_detections(g, 3, 12, 4), random_detections(g, 3, 12, 4)
    merged = merge(first, second, num_classes=4, nms_thresh=0.5, calls=calls)
    for b in range(3):
        keep = torch.cat([first.valid[b], second.valid[b]])
        boxes = torch.cat([first.boxes[b], second.boxes[b]])[keep]
        scores = torch.cat([first.scores[b], second.scores[b]])[keep]
        labels = torch.cat([first.labels[b], second.labels[b]])[keep]
        kept = batched_nms(boxes, scores, labels, 0.5)[:12]  # sorted by score
        n = len(kept)
        assert merged.valid[b].tolist() == [True] * n + [False] * (12 - n)
        assert torch.equal(merged.boxes[b, :n], boxes[kept])
        assert torch.equal(merged.scores[b, :n], scores[kept])
        assert torch.equal(merged.labels[b, :n], labels[kept])
        assert merged.boxes[b, n:].eq(0).all() and merged.labels[b, n:].eq(0).all()


def test_a_trained_detector_with_flip_tta(overfit_detector):
    """On its training images: every detection is one of the image's or of its mirror's
    (flipped back), the mAP stays; on a symmetric image (one that equals its mirror) the
    strongest detection is the plain one's or its mirror image's."""
    from tests.helpers import mean_ap

    model, data, _, _ = overfit_detector
    batch = collate([data[i] for i in range(8)])
    images, targets, sizes = batch["images"], batch["targets"], batch["image_sizes"]
    with torch.no_grad():
        plain = model(images, image_sizes=sizes)
        flipped = model(mirror(images, sizes), image_sizes=sizes)
        model.tta = "flip"
        try:
            augmented = model(images, image_sizes=sizes)
            tta_map = mean_ap(model, images, targets)
            symmetric = torch.cat([images[:1, ..., :64], images[:1, ..., :64].flip(-1)], -1)
            full = torch.tensor([list(symmetric.shape[-2:])])
            sym_tta = model(symmetric, image_sizes=full)[0]
        finally:
            model.tta = "none"
        plain_map = mean_ap(model, images, targets)
        sym_plain = model(symmetric, image_sizes=full)[0]
    for b in range(8):
        back = unmirror(flipped[b]["boxes"][None], sizes[b : b + 1])[0]
        pool = torch.cat([plain[b]["boxes"], back])
        for box in augmented[b]["boxes"]:
            assert (pool - box).abs().amax(1).min() < 1e-4
    assert tta_map >= plain_map - 0.05 and tta_map > 0.8
    top = sym_tta["boxes"][0]
    candidates = torch.stack(
        [sym_plain["boxes"][0], unmirror(sym_plain["boxes"][:1][None], full)[0, 0]]
    )
    assert (candidates - top).abs().amax(1).min() < 1e-4
    assert sym_tta["scores"][0] == pytest.approx(float(sym_plain["scores"][0]), abs=1e-5)
