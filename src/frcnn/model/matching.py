"""Assigning ground truth to anchors or proposals, and sampling a balanced training subset.

Both work on whole batches at once: ground truth is padded to (B, G) with a validity mask,
so there is no per-image Python loop and no host-device synchronisation.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from frcnn.boxes import pairwise_iou
from frcnn.checks import check_number
from frcnn.structures import GroundTruth

# `match` returns a ground-truth index (>= 0) per candidate, or one of these
BACKGROUND = -1  # best IoU below bg_iou_thresh
BETWEEN_THRESHOLDS = -2  # best IoU between the thresholds: neither foreground nor background

# training labels per candidate (`sample` takes them): a positive is 1 (or its class)
NEGATIVE = 0
IGNORED = -1

# the most elements of one (images, G, N) IoU tensor that `Sampling.match` makes (256 MB in
# float32): the ground truth of a crowded data set against every anchor (16 images of 300
# boxes with 40,029 anchors at 400 px: 192 M) is matched a few images at a time; COCO's
# (fewer than 100 boxes an image) at 400 px and batch 16 all at once
MATCH_ELEMENTS = 2**26


@dataclass(frozen=True)
class Sampling:
    """The matcher + sampler settings of one stage (the RPN's anchors, the ROI heads'
    proposals): IoU >= fg_iou_thresh is foreground, < bg_iou_thresh background, the band
    between ignored; `batch_size_per_image` candidates are sampled per image, at most
    `positive_fraction` of them foreground. `stage` ("rpn", "roi_heads") names the config
    keys in messages. Impossible settings are refused here, at start-up.
    """

    fg_iou_thresh: float
    bg_iou_thresh: float
    batch_size_per_image: int
    positive_fraction: float
    stage: str = "roi_heads"

    KEYS: ClassVar = ("fg_iou_thresh", "bg_iou_thresh", "batch_size_per_image", "positive_fraction")

    def __post_init__(self):
        key = f"model.{self.stage}"
        check_number(f"{key}.fg_iou_thresh", self.fg_iou_thresh, 0.0, 1.0)
        check_number(f"{key}.bg_iou_thresh", self.bg_iou_thresh, 0.0, 1.0)
        if self.fg_iou_thresh < self.bg_iou_thresh:
            # else the band between would count as background and foreground at once: the
            # run would silently train as with fg = bg
            raise ValueError(
                f"{key}.fg_iou_thresh={self.fg_iou_thresh} < "
                f"{key}.bg_iou_thresh={self.bg_iou_thresh}: IoU >= fg is foreground, IoU < bg "
                "background and the band between is ignored, so fg must be at least bg"
            )
        check_number(f"{key}.batch_size_per_image", self.batch_size_per_image, 1, integer=True)
        check_number(f"{key}.positive_fraction", self.positive_fraction, 0.0, 1.0, open_low=True)

    @classmethod
    def take(cls, settings: dict, stage: str, default: "Sampling") -> "Sampling":
        """Pop this object's keys out of a stage's flat settings (the config keeps them flat:
        model.rpn.fg_iou_thresh, ...), falling back to `default`'s values."""
        values = {k: settings.pop(k, getattr(default, k)) for k in cls.KEYS}
        return cls(**values, stage=stage)

    def match(self, gt: GroundTruth, boxes: Tensor, allow_low_quality_matches: bool) -> Tensor:
        """`match` of candidate `boxes` ((B, N, 4), or (N, 4) for every image: the anchors)
        with the ground truth `gt` ((B, G) boxes) at these thresholds -> (B, N), the IoU of
        as many images at a time as keep it within MATCH_ELEMENTS."""
        num_images, num_gt = gt.valid.shape
        step = max(1, MATCH_ELEMENTS // max(1, num_gt * boxes.shape[-2]))
        thresholds = self.fg_iou_thresh, self.bg_iou_thresh, allow_low_quality_matches
        parts = []
        for rows in (slice(i, i + step) for i in range(0, num_images, step)):
            candidates = boxes if boxes.dim() == 2 else boxes[rows]
            # one expression: the IoU is freed before the next rows' is made
            parts.append(
                match(pairwise_iou(gt.boxes[rows], candidates), gt.valid[rows], *thresholds)
            )
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def sample(self, labels: Tensor) -> Tensor:
        """`sample` with this batch size and positive fraction."""
        return sample(labels, self.batch_size_per_image, self.positive_fraction)


RPN_SAMPLING = Sampling(0.7, 0.3, 256, 0.5, stage="rpn")  # the Faster R-CNN paper's
ROI_SAMPLING = Sampling(0.5, 0.5, 512, 0.25, stage="roi_heads")  # the FPN paper's


def match(
    iou: Tensor,
    gt_valid: Tensor,
    fg_iou_thresh: float,
    bg_iou_thresh: float,
    allow_low_quality_matches: bool,
) -> Tensor:
    """Match every candidate box to its best ground-truth box.

    iou: (B, G, N) IoU of G (padded) ground-truth boxes with N candidates per image.
    gt_valid: (B, G) bool, False on padding.
    Returns (B, N) int64: the matched ground-truth index in 0..G-1 where the best IoU is
    >= fg_iou_thresh, BACKGROUND where it is < bg_iou_thresh, BETWEEN_THRESHOLDS in between.
    With `allow_low_quality_matches`, each ground-truth box also claims the candidates with
    which it has its highest IoU, even below fg_iou_thresh, so that no object goes without a
    positive. Unlike torchvision, a box that overlaps no candidate at all (IoU 0) claims none.
    """
    iou = iou.masked_fill(~gt_valid[:, :, None], -1.0)
    best_iou, matched = iou.max(dim=1)
    result = torch.where(best_iou >= fg_iou_thresh, matched, BETWEEN_THRESHOLDS)
    result = torch.where(best_iou < bg_iou_thresh, BACKGROUND, result)
    if allow_low_quality_matches:
        best_per_gt = iou.max(dim=2, keepdim=True).values
        is_best = (iou == best_per_gt) & (best_per_gt > 0)
        # a candidate that is some box's best keeps its own best match (as torchvision does)
        result = torch.where(is_best.any(dim=1), matched, result)
    return result


def training_labels(matched: Tensor, positive: Tensor | int = 1) -> Tensor:
    """matched (B, N) from `match` -> labels (B, N): `positive` (1, or the matched ground
    truth's class, (B, N)) where matched, NEGATIVE on background, IGNORED between thresholds."""
    negative_or_ignored = torch.where(matched == BACKGROUND, NEGATIVE, IGNORED)
    return torch.where(matched >= 0, positive, negative_or_ignored)


def sample(
    labels: Tensor,
    batch_size_per_image: int,
    positive_fraction: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick a random, balanced training subset per image.

    labels: (B, N) int, 1 positive, NEGATIVE (0), IGNORED (-1).
    Returns a (B, N) bool mask with at most batch_size_per_image * positive_fraction positives
    per image, filled up with negatives to batch_size_per_image where there are enough.
    """
    num_images, num_candidates = labels.shape
    priority = torch.rand(labels.shape, device=labels.device, generator=generator)
    positive = labels == 1
    negative = labels == NEGATIVE

    max_pos = min(int(batch_size_per_image * positive_fraction), num_candidates)
    pos_priority, pos_idx = torch.where(positive, priority, -1.0).topk(max_pos, dim=1)
    pos_taken = pos_priority >= 0
    num_neg = batch_size_per_image - pos_taken.sum(dim=1, keepdim=True)

    max_neg = min(batch_size_per_image, num_candidates)
    neg_priority, neg_idx = torch.where(negative, priority, -1.0).topk(max_neg, dim=1)
    rank = torch.arange(max_neg, device=labels.device)
    neg_taken = (neg_priority >= 0) & (rank[None, :] < num_neg)

    sampled = torch.zeros_like(positive)
    sampled.scatter_(1, pos_idx, pos_taken)
    # scatter_ with a bool source keeps the last write for duplicate indices: write only Trues
    sampled.scatter_(1, neg_idx, neg_taken | sampled.gather(1, neg_idx))
    return sampled
