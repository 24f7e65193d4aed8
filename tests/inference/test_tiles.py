"""Tiled detection: windows that cover the image, the greedy merge, and recall on a large image
of small objects with and without tiles."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou
from tqdm import tqdm

from frcnn.data.synthetic import draw_sample
from frcnn.inference.predictor import Predictor
from frcnn.inference.tiles import cut_at_border, detect_tiled, merge, tile_windows
from tests.helpers import OVERFIT_SIZE


@pytest.mark.parametrize(("width", "height"), [(1000, 700), (641, 2000), (4000, 3000)])
@pytest.mark.parametrize("overlap", [0.0, 0.2, 0.5])
def test_windows_cover_the_image_and_overlap_as_asked(width, height, overlap):
    tile = 640
    windows = tile_windows(width, height, tile, overlap)
    covered = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in windows:
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert x1 - x0 == min(tile, width) and y1 - y0 == min(tile, height)
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    xs = sorted({w[0] for w in windows})
    gaps = np.diff(xs)
    assert (tile - gaps >= overlap * tile - 1).all()  # neighbours share at least the overlap
    assert max(w[2] for w in windows) == width and max(w[3] for w in windows) == height


def test_an_image_that_fits_in_one_tile_has_no_tiles():
    assert tile_windows(640, 480, 640, 0.2) == []


def test_merge_joins_cut_parts_and_removes_duplicates_as_nms_does():
    boxes = torch.tensor(
        [
            [450.0, 100, 640, 160],  # an object cut at a tile's right side ...
            [512.0, 100, 700, 160],  # ... and its other part, from the next tile
            [0.0, 0, 50, 50],  # an object ...
            [1.0, 1, 49, 50],  # ... its duplicate from an overlapping tile
            [0.0, 0, 30, 50],  # ... and a part of it, cut at a tile's side
            [10.0, 10, 20, 20],  # a small object of the same class on it: kept, as NMS keeps it
            [0.0, 0, 50, 50],  # another class in the same place
        ]
    )
    scores = torch.tensor([0.9, 0.6, 0.8, 0.7, 0.75, 0.5, 0.3])
    labels = torch.tensor([1, 1, 2, 2, 2, 2, 3])
    cut = torch.tensor([True, True, False, False, True, False, False])
    merged, best, classes = merge(boxes, scores, labels, cut)
    expected = [[450.0, 100, 700, 160], [0.0, 0, 50, 50], [10.0, 10, 20, 20], [0.0, 0, 50, 50]]
    torch.testing.assert_close(merged, torch.tensor(expected))
    torch.testing.assert_close(best, torch.tensor([0.9, 0.8, 0.5, 0.3]))
    assert classes.tolist() == [1, 2, 2, 3]
    empty = merge(boxes[:0], scores[:0], labels[:0], cut[:0])
    assert [len(x) for x in empty] == [0, 0, 0]


def dense_merge(boxes, scores, labels, cut, match_thresh=0.5):
    """`merge` restated on whole N x N matrices (what it computed before 2026-12-05), the
    reference for its row-by-row form."""
    inter, area = box_pairs(boxes)
    kept_boxes, kept_scores, kept_labels = [boxes[~cut]], [scores[~cut]], [labels[~cut]]
    for label in labels[cut].unique():
        mine = (cut & (labels == label)).nonzero().squeeze(1)
        mine = mine[scores[mine].argsort(descending=True)]
        matched = inter[mine][:, mine] >= match_thresh * torch.minimum(
            area[mine][:, None], area[mine][None]
        )
        taken = torch.zeros(len(mine), dtype=torch.bool)
        for i in range(len(mine)):
            if not taken[i]:
                group = matched[i] & ~taken
                taken |= group
                members = boxes[mine][group]
                kept_boxes.append(torch.cat([members[:, :2].amin(0), members[:, 2:].amax(0)])[None])
                kept_scores.append(scores[mine[i], None])
                kept_labels.append(label[None])
    was_cut = torch.cat([torch.full((len(b),), i > 0) for i, b in enumerate(kept_boxes)])
    boxes, scores, labels = (torch.cat(x) for x in (kept_boxes, kept_scores, kept_labels))
    order = scores.argsort(descending=True)
    boxes, scores, labels, was_cut = boxes[order], scores[order], labels[order], was_cut[order]
    inter, area = box_pairs(boxes)
    iou = inter / (area[:, None] + area[None] - inter).clamp(min=1e-12)
    inside = (inter >= match_thresh * area[None]) & was_cut[None]
    duplicate = (((iou >= match_thresh) | inside) & (labels[:, None] == labels[None])).triu(1)
    kept = torch.ones(len(boxes), dtype=torch.bool)
    for i in range(len(boxes)):
        if kept[i]:
            kept &= ~duplicate[i]
    return boxes[kept], scores[kept], labels[kept]


def box_pairs(boxes):
    """(N, 4) -> pairwise intersection areas (N, N) by corner pairs, and areas (N,)."""
    low = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    high = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    return (high - low).clamp(min=0).prod(-1), (boxes[:, 2:] - boxes[:, :2]).prod(-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_merge_row_by_row_is_the_merge_on_whole_matrices(seed):
    """900 detections of 300 objects, three of each nearby (as overlapping tiles find them),
    3 classes, 30% cut: the same boxes, scores and labels as the dense restatement, and with
    `most` the first of them."""
    generator = torch.Generator().manual_seed(seed)
    objects = torch.rand(300, 2, generator=generator) * 1500
    near = objects.repeat(3, 1) + torch.randn(900, 2, generator=generator) * 6  # duplicates
    sizes = torch.rand(900, 2, generator=generator) * 60 + 4
    boxes = torch.cat([near, near + sizes], 1)
    scores = torch.rand(900, generator=generator)
    labels = torch.randint(1, 4, (900,), generator=generator)
    cut = torch.rand(900, generator=generator) < 0.3
    expected = dense_merge(boxes, scores, labels, cut)
    assert 300 < len(expected[0]) < 850  # (much is merged, much kept)
    for found, wanted in zip(merge(boxes, scores, labels, cut), expected, strict=True):
        assert torch.equal(found, wanted)
    for found, wanted in zip(merge(boxes, scores, labels, cut, most=50), expected, strict=True):
        assert torch.equal(found, wanted[:50])


def test_a_box_is_cut_where_it_touches_a_tile_side_inside_the_image():
    window, size = (100, 0, 300, 200), (400, 200)  # left and right sides inside, the rest not
    boxes = torch.tensor(
        [[100.0, 50, 150, 80], [250.0, 50, 300, 80], [150.0, 0, 200, 200], [120.0, 20, 280, 180]]
    )
    assert cut_at_border(boxes, window, size).tolist() == [True, True, False, False]


def large_canvas(columns: int = 4, rows: int = 2, cell: int = 400):
    """The overfit detector's 8 training scenes (240-400 px) on one canvas of cells x cells ->
    (image, boxes (N, 4) xyxy, labels (N,))."""
    canvas = Image.new("RGB", (columns * cell, rows * cell), (100, 100, 100))
    boxes, labels = [], []
    for index in range(columns * rows):
        record = draw_sample(0, index, 3, max_objects=4)
        x, y = cell * (index % columns), cell * (index // columns)
        canvas.paste(record.image, (x, y))
        boxes.append(torch.from_numpy(record.boxes) + torch.tensor([x, y, x, y]))
        labels.append(torch.from_numpy(record.labels))
    return canvas, torch.cat(boxes), torch.cat(labels)


def recall(detection: dict, boxes, labels, min_score: float = 0.3) -> float:
    confident = detection["scores"] >= min_score
    iou = box_iou(boxes.float(), detection["boxes"][confident])
    same = labels[:, None] == detection["labels"][confident][None]
    return float(((iou >= 0.5) & same).any(1).float().mean())


def test_tiles_find_the_small_objects_that_the_whole_image_loses(overfit_detector):
    """A 1600 x 800 canvas of 8 scenes, letterboxed whole to the detector's 128 px, shrinks each
    scene 12x; tiles of 400 px with 25% overlap (not aligned with the scenes) keep them at
    about the scale of training. The progress bar given counts the windows, unseen before
    its delay."""
    model, data, _, _ = overfit_detector
    predictor = Predictor(model, OVERFIT_SIZE, class_names=data.class_names, device="cpu")
    image, boxes, labels = large_canvas()
    whole = predictor(image)
    shown = io.StringIO()
    with tqdm(file=shown, delay=60) as progress:
        tiled = detect_tiled(predictor, image, 400, 0.25, 8, max_detections=300, progress=progress)
        # 5 x 3 tiles (x from 0, 300, 600, 900, 1200; y from 0, 300, 400) and the whole image
        assert (progress.n, progress.total) == (16, 16)
    assert shown.getvalue() == ""  # a bar is shown only once its delay has passed
    assert tiled["names"] == [data.class_names[c - 1] for c in tiled["labels"]]
    assert recall(whole, boxes, labels) < 0.3
    assert recall(tiled, boxes, labels) >= 0.8
