"""What the detector is asked to find: boxes per class and image, box sizes against the FPN
levels that pool them, and whether the anchors reach those boxes.

A box's side is sqrt(area) in input pixels. Anchor coverage: the share of boxes whose best
anchor (on a level, or on any) has an IoU of at least the RPN's foreground threshold, i.e. a
box the RPN trains on with a real positive anchor; the others only get their best anchor as a
low-quality match (Faster R-CNN's rule), usually a poor one.
"""

import math

import torch
from torch import Tensor

from frcnn.boxes import box_area, pairwise_iou
from frcnn.model.anchors import cell_anchors
from frcnn.model.poolers import assign_levels

SIDE_BINS = (0, 16, 32, 64, 128, 256, 512, math.inf)  # sqrt(area), input pixels


def best_anchor_iou(boxes: Tensor, generator, image_size: int) -> Tensor:
    """(N, 4) boxes -> (N, L): each box's highest IoU with an anchor of each level of an S x S
    input (a stride-s level has ceil(S / s) cells a side: the backbone's stride-2 layers pad).

    Of the anchors of one shape, the one centred nearest the box's centre (per axis) overlaps it
    most, so each box is compared with one anchor per shape and level, not with all of them
    (tested equal to the brute force).
    """
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    best = torch.zeros(len(boxes), len(generator.strides))
    for level, (stride, sizes, ratios) in enumerate(
        zip(generator.strides, generator.sizes, generator.aspect_ratios, strict=True)
    ):
        cells = math.ceil(image_size / stride)
        index = (centres / stride - generator.offset).round().clamp(0, cells - 1)
        nearest = ((index + generator.offset) * stride).repeat(1, 2)  # (N, 4)
        anchors = nearest[:, None, :] + cell_anchors(sizes, ratios)[None]  # (N, A, 4)
        iou = pairwise_iou(boxes[:, None], anchors)[:, 0]  # each box with its own anchors
        best[:, level] = iou.amax(1) if len(boxes) else best[:, level]
    return best


def dataset_statistics(boxes: list[Tensor], labels: list[Tensor], model, image_size: int) -> dict:
    """Statistics of the ground truth of some images (per image: boxes (N, 4) in input pixels,
    labels (N,) 1..C, crowds left out), seen by `model`'s anchors and pooler at `image_size`.

    Returns boxes_per_image (I,), labels (N,), sides (N,) px, pooled_level (N,) index into
    the pooled levels (P2..), best_iou (N, L) per anchor level, fg_iou, level_names,
    level_edges (side, "P2|P3") where the pooled level changes and `table`: one row per
    SIDE_BINS range with its boxes, the levels pooling them and the
    anchor coverage per level and on any level.
    """
    generator = model.anchor_generator
    all_boxes = torch.cat([b.reshape(-1, 4) for b in boxes]).float() if boxes else torch.zeros(0, 4)
    all_labels = (
        torch.cat([lab.reshape(-1) for lab in labels]).long()
        if labels
        else torch.zeros(0, dtype=torch.long)
    )
    sides = box_area(all_boxes).clamp(min=0).sqrt()
    first = int(math.log2(generator.strides[0]))
    level_names = [f"P{first + i}" for i in range(len(generator.strides))]
    pooled_strides = generator.strides[:-1]  # P2..P5; P6 serves the RPN only
    heads = model.roi_heads
    pooled = assign_levels(all_boxes, pooled_strides, heads.canonical_size, heads.canonical_level)
    # FPN eq. 1: level k pools sides from canonical_size * 2**(k - canonical_level) up
    edges = [
        (heads.canonical_size * 2.0 ** (first + k - heads.canonical_level), f"{a}|{b}")
        for k, (a, b) in enumerate(zip(level_names[:-2], level_names[1:-1], strict=True), start=1)
    ]
    best = best_anchor_iou(all_boxes, generator, image_size)
    fg = model.rpn.sampling.fg_iou_thresh
    covered = best >= fg
    table = []
    for low, high in zip(SIDE_BINS[:-1], SIDE_BINS[1:], strict=True):
        inside = (sides >= low) & (sides < high)
        n = int(inside.sum())
        row = {"side (px)": f"{low}-{high}" if high < math.inf else f">= {low}", "boxes": n}
        levels = sorted(set(pooled[inside].tolist()))
        row["pooled from"] = ", ".join(level_names[i] for i in levels) or "-"
        for level, name in enumerate(level_names):
            row[name] = share(covered[inside, level])
        row["any level"] = share(covered[inside].any(1))
        table.append(row)
    return {
        "boxes_per_image": torch.tensor([len(b) for b in boxes], dtype=torch.long),
        "labels": all_labels,
        "sides": sides,
        "pooled_level": pooled,
        "best_iou": best,
        "fg_iou": fg,
        "level_names": level_names,
        "level_edges": edges,
        "table": table,
    }


def share(flags: Tensor) -> float:
    """The fraction of True flags; nan for none."""
    return float(flags.float().mean()) if flags.numel() else math.nan
