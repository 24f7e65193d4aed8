"""Flip test-time augmentation: each image and its mirror image detected, the mirror's boxes
flipped back, and both sets merged by the detector's own per-class NMS and top-K."""

import torch
from torch import Tensor

from frcnn.boxes import nms_in_rows, top_k_per_image
from frcnn.structures import Detections

TTA = ("none", "flip")


def mirror(images: Tensor, image_sizes: Tensor) -> Tensor:
    """(B, 3, S, S) images with each content (top-left, (height, width) in `image_sizes`)
    flipped left-right in place; the letterbox padding stays where it is."""
    columns = torch.arange(images.shape[-1], device=images.device)
    widths = image_sizes[:, 1:].to(images.device)  # (B, 1)
    source = torch.where(columns < widths, widths - 1 - columns, columns)  # (B, S)
    return images.gather(-1, source[:, None, None, :].expand_as(images))


def unmirror(boxes: Tensor, image_sizes: Tensor) -> Tensor:
    """(B, K, 4) xyxy boxes found on `mirror`ed images -> on the originals: x -> width - x."""
    widths = image_sizes[:, 1, None].to(boxes)  # (B, 1)
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([widths - x1, y0, widths - x0, y1], dim=-1)


def merge(
    first: Detections, second: Detections, num_classes: int, nms_thresh: float, calls: str
) -> Detections:
    """Two Detections (B, K) of the same images -> (B, K): NMS per image and class over both,
    then the best K of each image (what post-processing does to one set)."""
    boxes = torch.cat([first.boxes, second.boxes], 1)  # (B, 2K, 4)
    scores = torch.cat([first.scores, second.scores], 1)
    labels = torch.cat([first.labels, second.labels], 1)
    valid = torch.cat([first.valid, second.valid], 1)
    batch, count = scores.shape
    classes = torch.arange(1, num_classes + 1, device=labels.device)[None, :, None]
    candidate = valid[:, None] & (labels[:, None] == classes)  # (B, C, 2K): one row per class
    kept = (
        nms_in_rows(
            boxes[:, None].expand(-1, num_classes, -1, -1).reshape(-1, count, 4),
            scores[:, None].expand(-1, num_classes, -1).reshape(-1, count),
            candidate.reshape(-1, count),
            nms_thresh,
            images=batch,
            calls=calls,
        )
        .view(batch, num_classes, count)
        .any(1)
    )
    best, valid = top_k_per_image(scores, kept, first.scores.shape[1])
    return Detections(
        torch.where(valid[..., None], boxes.gather(1, best[..., None].expand(-1, -1, 4)), 0.0),
        torch.where(valid, scores.gather(1, best), 0.0),
        torch.where(valid, labels.gather(1, best), 0),
        valid,
    )
