"""The small structures the stages pass on, and the shape legend of the model's docstrings.

Shapes:
    B   images in the batch
    S   input side (images are S x S after the letterbox), in pixels
    A   anchors of all FPN levels (N in the RPN: one objectness logit and 4 deltas each)
    P   proposals per image (a fixed count: padded, with a validity mask)
    G   ground-truth boxes per image (padded to the batch's largest count, at least 1)
    R   rows: sampled proposals (training) or all B x P proposals (inference), images together
    C   object classes (labels 1..C; 0 is background)
    K   detections per image (a fixed count: padded, with a validity mask)
    D   detections of one image (the valid ones of its K)
Boxes are xyxy in input pixels unless a docstring says otherwise.
"""

from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence


class GroundTruth(NamedTuple):
    """The targets of a batch padded to G boxes per image (G >= 1)."""

    boxes: Tensor  # (B, G, 4) xyxy, input pixels
    labels: Tensor  # (B, G) int64 in 1..num_classes
    valid: Tensor  # (B, G) bool: False on padding and on degenerate boxes


class Proposals(NamedTuple):
    """The RPN's proposals: a fixed count P per image, padded where fewer survive."""

    boxes: Tensor  # (B, P, 4) xyxy, input pixels; padding rows hold a harmless box
    valid: Tensor  # (B, P) bool: True on a prefix of each row (best first)


class Detections(NamedTuple):
    """The final detections of a batch: a fixed count K per image, best first, padded with
    zeros (label 0) where fewer survive. The ONNX export's outputs are these tensors."""

    boxes: Tensor  # (B, K, 4) xyxy, input pixels
    scores: Tensor  # (B, K) in [0, 1]
    labels: Tensor  # (B, K) int64 in 1..C; 0 on padding
    valid: Tensor  # (B, K) bool: True on a prefix of each row

    def per_image(self) -> list[dict[str, Tensor]]:
        """-> B dicts {"boxes" (D, 4), "scores" (D,), "labels" (D,)}: the valid rows only."""
        counts = self.valid.sum(1).tolist()  # the lengths on the host: one read-back per batch
        return [
            {"boxes": boxes[:n], "scores": scores[:n], "labels": labels[:n]}
            for boxes, scores, labels, n in zip(
                self.boxes, self.scores, self.labels, counts, strict=True
            )
        ]


def pad_targets(targets: list[dict[str, Tensor]], device) -> GroundTruth:
    """List of per-image {"boxes" (K, 4), "labels" (K,)} -> GroundTruth; K may be 0."""
    boxes = [t["boxes"].to(device, torch.float32).reshape(-1, 4) for t in targets]
    labels = [t["labels"].to(device, torch.int64).reshape(-1) for t in targets]
    # one padding row always, so that max() over ground truth works on images without boxes
    boxes.append(torch.zeros(1, 4, device=device))
    labels.append(torch.zeros(1, dtype=torch.int64, device=device))
    boxes = pad_sequence(boxes, batch_first=True)[:-1]
    labels = pad_sequence(labels, batch_first=True)[:-1]
    valid = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1]) & (labels > 0)
    return GroundTruth(boxes, labels, valid)
