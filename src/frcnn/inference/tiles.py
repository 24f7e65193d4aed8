"""Small objects in large images: detection on overlapping tiles plus the whole image, merged.

A 4000 px photo letterboxed to an 800 px input shrinks a 30 px object to 6 px, below what the
detector finds. Tiles of `tile` pixels, each resized to the input size on its own, keep such
objects at a size the detector was trained on; the whole image, detected too, keeps the large
ones that no tile holds. The merge (SAHI's greedy non-maximum merging) groups same-class boxes
that overlap by at least `match_thresh` of the smaller one's area, best score first, and
replaces each group by the box that encloses it: a duplicate from a neighbouring tile is
absorbed, and the parts of an object cut at a tile border are joined into one box.
"""

import torch
from torch import Tensor

MATCH_THRESH = 0.5  # the overlap that makes two boxes one (see `merge`)
BORDER_PX = 1.0  # a box this close to a tile's inner side was cut by it


def tile_windows(width: int, height: int, tile: int, overlap: float) -> list[tuple[int, ...]]:
    """Windows (x0, y0, x1, y1) in pixels of `tile` x `tile` that cover a width x height image,
    neighbours overlapping by at least `overlap` of a tile, the last of each row and column
    flush with the image's edge. None where the image fits in one tile."""
    if width <= tile and height <= tile:
        return []
    step = max(1, int(tile * (1 - overlap)))
    xs, ys = (starts(side, tile, step) for side in (width, height))
    return [(x, y, min(x + tile, width), min(y + tile, height)) for y in ys for x in xs]


def starts(side: int, tile: int, step: int) -> list[int]:
    """Where the tiles along one side begin: every `step`, the last one flush with the end."""
    if side <= tile:
        return [0]
    positions = list(range(0, side - tile, step))
    return positions + [side - tile]


def detect_tiled(
    predictor, image, tile: int, overlap: float, batch_size: int, max_detections: int
) -> dict:
    """One PIL image detected on its tiles and whole -> the Predictor's dict ("boxes" (D, 4)
    xyxy in the image's pixels, "scores", "labels", "names"), merged, at most `max_detections`,
    best first."""
    windows = tile_windows(image.width, image.height, tile, overlap)
    crops = [image.crop(window) for window in windows] + [image]
    found = predictor(crops, batch_size)
    size = (image.width, image.height)
    boxes, cut = [], []
    for detection, window in zip(found, windows + [(0, 0, *size)], strict=True):
        boxes.append(detection["boxes"] + torch.tensor(window[:2] * 2, dtype=torch.float32))
        cut.append(cut_at_border(boxes[-1], window, size))
    scores = torch.cat([d["scores"] for d in found])
    labels = torch.cat([d["labels"] for d in found])
    boxes, scores, labels = merge(torch.cat(boxes), scores, labels, torch.cat(cut))
    boxes, scores, labels = boxes[:max_detections], scores[:max_detections], labels[:max_detections]
    names = [predictor.name(int(label)) for label in labels]
    return {"boxes": boxes, "scores": scores, "labels": labels, "names": names}


def cut_at_border(boxes: Tensor, window: tuple[int, ...], size: tuple[int, int]) -> Tensor:
    """Which boxes (N, 4) xyxy in image pixels, found in `window`, touch one of its sides that
    lies inside the image (width, height) -> (N,) bool: the object may go on beyond it."""
    x0, y0, x1, y1 = window
    inner = torch.tensor([x0 > 0, y0 > 0, x1 < size[0], y1 < size[1]])
    near = torch.cat([boxes[:, :2] <= torch.tensor([x0, y0]) + BORDER_PX,
                      boxes[:, 2:] >= torch.tensor([x1, y1]) - BORDER_PX], 1)  # fmt: skip
    return (near & inner).any(1)


def merge(
    boxes: Tensor, scores: Tensor, labels: Tensor, cut: Tensor, match_thresh: float = MATCH_THRESH
) -> tuple[Tensor, Tensor, Tensor]:
    """Tile detections into one set. boxes (N, 4) xyxy, scores (N,), labels (N,), cut (N,) bool
    (found touching an inner tile side) -> boxes (M, 4), scores, labels, best first.

    First the cut boxes are joined: best score first, each takes the cut boxes of its class
    left that overlap it by at least `match_thresh` of the smaller one's area (the parts of
    one object in neighbouring tiles) and becomes the box enclosing them. Then duplicates go,
    as in NMS: best first, each box removes the later boxes of its class that overlap it by
    IoU `match_thresh`, and the cut ones that lie mostly (`match_thresh` of their area) inside
    it (a part of an object that a tile or the whole image found whole)."""
    kept_boxes, kept_scores, kept_labels = [boxes[~cut]], [scores[~cut]], [labels[~cut]]
    for label in labels[cut].unique():
        mine = (cut & (labels == label)).nonzero().squeeze(1)
        mine = mine[scores[mine].argsort(descending=True)]
        parts = boxes[mine]
        inter, area = intersections(parts)
        matched = inter >= match_thresh * torch.minimum(area[:, None], area[None])
        taken = torch.zeros(len(mine), dtype=torch.bool)
        for i in range(len(mine)):
            if taken[i]:
                continue
            group = matched[i] & ~taken
            taken |= group
            members = parts[group]
            kept_boxes.append(torch.cat([members[:, :2].amin(0), members[:, 2:].amax(0)])[None])
            kept_scores.append(scores[mine[i], None])
            kept_labels.append(label[None])
    was_cut = torch.zeros(len(kept_boxes[0]), dtype=torch.bool)
    was_cut = torch.cat([was_cut, torch.ones(len(kept_boxes) - 1, dtype=torch.bool)])
    boxes, scores, labels = (torch.cat(x) for x in (kept_boxes, kept_scores, kept_labels))
    order = scores.argsort(descending=True)
    boxes, scores, labels, was_cut = boxes[order], scores[order], labels[order], was_cut[order]
    inter, area = intersections(boxes)
    iou = inter / (area[:, None] + area[None] - inter).clamp(min=1e-12)
    inside = (inter >= match_thresh * area[None]) & was_cut[None]  # [i, j]: most of cut box j
    duplicate = ((iou >= match_thresh) | inside) & (labels[:, None] == labels[None])
    duplicate = duplicate.triu(1)  # a box removes only boxes that score below it
    kept = torch.ones(len(boxes), dtype=torch.bool)
    for i in range(len(boxes)):
        if kept[i]:
            kept &= ~duplicate[i]
    return boxes[kept], scores[kept], labels[kept]


def intersections(boxes: Tensor) -> tuple[Tensor, Tensor]:
    """(N, 4) xyxy boxes -> their pairwise intersection areas (N, N) and areas (N,)."""
    low = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    high = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    return (high - low).clamp(min=0).prod(-1), (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(-1)
