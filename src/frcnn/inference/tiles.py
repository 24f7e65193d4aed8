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

from frcnn.boxes import box_area, pairwise_intersection

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
    predictor,
    image,
    tile: int,
    overlap: float,
    batch_size: int,
    max_detections: int,
    progress=None,
) -> dict:
    """One PIL image detected on its tiles and whole -> the Predictor's dict ("boxes" (D, 4)
    xyxy in the image's pixels, "scores", "labels", "names"), merged, at most `max_detections`,
    best first. `progress`: a tqdm bar that counts the windows detected (its total set here)."""
    size = (image.width, image.height)
    whole = (0, 0, *size)
    windows = tile_windows(*size, tile, overlap) + [whole]
    if progress is not None:
        progress.total = len(windows)  # (not `reset`, which shows the bar before its `delay`)
    found = []
    for start in range(0, len(windows), batch_size):  # (cropped a batch at a time: a
        # 100-megapixel image's 400 tiles at once would hold 500 MB of crops)
        batch = windows[start : start + batch_size]
        found += predictor([image if w == whole else image.crop(w) for w in batch], batch_size)
        if progress is not None:
            progress.update(len(batch))
    boxes, cut = [], []
    for detection, window in zip(found, windows, strict=True):
        boxes.append(detection["boxes"] + torch.tensor(window[:2] * 2, dtype=torch.float32))
        cut.append(cut_at_border(boxes[-1], window, size))
    scores = torch.cat([d["scores"] for d in found])
    labels = torch.cat([d["labels"] for d in found])
    boxes, scores, labels = merge(
        torch.cat(boxes), scores, labels, torch.cat(cut), most=max_detections
    )
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
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    cut: Tensor,
    match_thresh: float = MATCH_THRESH,
    most: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Tile detections into one set. boxes (N, 4) xyxy, scores (N,), labels (N,), cut (N,) bool
    (found touching an inner tile side) -> boxes (M, 4), scores, labels, best first; the best
    `most` only, where given (the work stops there).

    First the cut boxes are joined: best score first, each takes the cut boxes of its class
    left that overlap it by at least `match_thresh` of the smaller one's area (the parts of
    one object in neighbouring tiles) and becomes the box enclosing them. Then duplicates go,
    as in NMS: best first, each box removes the later boxes of its class that overlap it by
    IoU `match_thresh`, and the cut ones that lie mostly (`match_thresh` of their area) inside
    it (a part of an object that a tile or the whole image found whole).

    Each box's overlaps are computed as it comes, with the boxes after it: memory in N, not
    N x N (the 19,200 detections of an 8000 x 6000 image's tiles took 12 GB that way).
    """
    kept_boxes, kept_scores, kept_labels = [boxes[~cut]], [scores[~cut]], [labels[~cut]]
    for label in labels[cut].unique():
        mine = (cut & (labels == label)).nonzero().squeeze(1)
        mine = mine[scores[mine].argsort(descending=True)]
        joined, leaders = join(boxes[mine], match_thresh)
        kept_boxes.append(joined)
        kept_scores.append(scores[mine[leaders]])
        kept_labels.append(label.expand(len(leaders)))
    was_cut = torch.cat([torch.full((len(b),), i > 0) for i, b in enumerate(kept_boxes)])
    boxes, scores, labels = (torch.cat(x) for x in (kept_boxes, kept_scores, kept_labels))
    order = scores.argsort(descending=True)
    boxes, scores, labels, was_cut = boxes[order], scores[order], labels[order], was_cut[order]
    area = box_area(boxes)
    removed, kept = torch.zeros(len(boxes), dtype=torch.bool), []
    for i in range(len(boxes)):
        if removed[i]:
            continue
        kept.append(i)
        if len(kept) == most:
            break
        later = slice(i + 1, None)  # a box removes only boxes that score below it
        inter = pairwise_intersection(boxes[i : i + 1], boxes[later])[0]
        iou = inter / (area[i] + area[later] - inter).clamp(min=1e-12)
        inside = (inter >= match_thresh * area[later]) & was_cut[later]  # most of a cut box
        removed[later] |= ((iou >= match_thresh) | inside) & (labels[later] == labels[i])
    kept = torch.tensor(kept, dtype=torch.int64)
    return boxes[kept], scores[kept], labels[kept]


def join(parts: Tensor, match_thresh: float) -> tuple[Tensor, Tensor]:
    """Cut boxes of one class, best first (P, 4) -> the boxes (G, 4) that enclose each group of
    parts, and each group's best part (G,) (indices into `parts`): best first, a part not yet
    taken takes the parts left that overlap it by at least `match_thresh` of the smaller one's
    area, itself included."""
    area = box_area(parts)
    left, enclosing, leaders = torch.ones(len(parts), dtype=torch.bool), [], []
    for i in range(len(parts)):
        if not left[i]:
            continue
        inter = pairwise_intersection(parts[i : i + 1], parts)[0]
        group = left & (inter >= match_thresh * torch.minimum(area[i], area))
        left &= ~group
        members = parts[group]
        enclosing.append(torch.cat([members[:, :2].amin(0), members[:, 2:].amax(0)]))
        leaders.append(i)
    return torch.stack(enclosing), torch.tensor(leaders, dtype=torch.int64)
