"""ROI heads: two-FC box head, predictor, ROI sampling and losses, post-processing."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import record_function

from frcnn.boxes import (
    BoxCoder,
    check_box_coding,
    clip_boxes,
    is_large_enough,
    nms_in_rows,
    top_k_per_image,
)
from frcnn.checks import check_number
from frcnn.model.matching import IGNORED, ROI_SAMPLING, Sampling, training_labels
from frcnn.model.poolers import POOLERS, pooler
from frcnn.structures import Detections, GroundTruth, Proposals


class TwoMLPHead(nn.Module):
    """Flatten pooled features, then two fully connected layers with ReLU."""

    def __init__(self, in_features: int, representation_size: int = 1024):
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        """(R, C, S, S) -> (R, representation_size)."""
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(1)))))


class BoxPredictor(nn.Module):
    """Class logits (background first) and class-specific box deltas."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        self.bbox_pred = nn.Linear(in_features, (num_classes + 1) * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(R, F) -> logits (R, num_classes + 1), deltas (R, num_classes + 1, 4)."""
        deltas = self.bbox_pred(x)
        return self.cls_score(x), deltas.view(x.shape[0], deltas.shape[1] // 4, 4)


class RoIHeads(nn.Module):
    """Classifies proposals and refines their boxes; training samples and losses; detections.

    `num_classes` counts object classes; labels are 1..num_classes and 0 is background.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        strides=(4, 8, 16, 32),
        output_size: int = 7,
        sampling_ratio: int = 2,
        pooler: str = "own",
        canonical_size: float = 224,
        canonical_level: int = 4,
        representation_size: int = 1024,
        sampling: Sampling = ROI_SAMPLING,
        box_coder_weights=(10.0, 10.0, 5.0, 5.0),
        smooth_l1_beta: float = 1.0 / 9,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        nms_calls: str = "image",
        detections_per_img: int = 100,
        min_size: float = 1e-2,
    ):
        super().__init__()
        if sampling_ratio < 1:
            raise ValueError(
                f"model.roi_heads.sampling_ratio={sampling_ratio}: use a fixed number of samples"
                " per bin side (>= 1; torchvision's adaptive 0 is not supported)"
            )
        for name, count in (
            ("output_size", output_size),
            ("representation_size", representation_size),
            ("detections_per_img", detections_per_img),
        ):
            check_number(f"model.roi_heads.{name}", count, 1, integer=True)
        check_number("model.roi_heads.nms_thresh", nms_thresh, 0.0, 1.0, open_low=True)
        # (a detection scores above it: at 1, none would)
        check_number("model.roi_heads.score_thresh", score_thresh, 0.0, 1.0, open_high=True)
        check_number("model.roi_heads.min_size", min_size, 0.0)
        check_number("model.roi_heads.canonical_size", canonical_size, 0, open_low=True)
        check_number("model.roi_heads.canonical_level", canonical_level, 0, integer=True)
        check_box_coding("model.roi_heads", box_coder_weights, smooth_l1_beta)
        self.num_classes = num_classes
        self.strides = tuple(strides)
        self.output_size = output_size
        if pooler not in POOLERS:
            raise ValueError(f"model.roi_heads.pooler={pooler!r}: one of {', '.join(POOLERS)}")
        self.pooler = pooler
        self.sampling_ratio = sampling_ratio
        self.canonical_size = canonical_size
        self.canonical_level = canonical_level
        self.box_head = TwoMLPHead(in_channels * output_size**2, representation_size)
        self.predictor = BoxPredictor(representation_size, num_classes)
        self.box_coder = BoxCoder(box_coder_weights)
        self.sampling = sampling
        self.smooth_l1_beta = smooth_l1_beta
        self.score_thresh = score_thresh
        self.nms_thresh, self.nms_calls = nms_thresh, nms_calls
        self.detections_per_img = detections_per_img
        self.min_size = min_size

    def predict(
        self, features: list[Tensor], boxes: Tensor, image_index: Tensor
    ) -> tuple[Tensor, Tensor]:
        """P2..P5, (R, 4) boxes and their (R,) images -> logits (R, C+1), deltas (R, C+1, 4)."""
        with record_function("frcnn.roi.align"):
            pooled = pooler(self.pooler)(
                features,
                boxes,
                image_index,
                self.strides,
                self.output_size,
                self.sampling_ratio,
                self.canonical_size,
                self.canonical_level,
            )
        with record_function("frcnn.roi.box_head"):
            return self.predictor(self.box_head(pooled))

    def losses(
        self, features: list[Tensor], proposals: Proposals, gt: GroundTruth
    ) -> dict[str, Tensor]:
        """Sample proposals (ground truth included), classify them, return {"roi_cls", "roi_box"}.

        proposals (B, P) from the RPN; gt: boxes (B, G, 4), labels (B, G), valid (B, G).
        Losses are normalised by the number of sampled proposals in the batch.
        """
        with record_function("frcnn.roi.sample_proposals"):
            boxes, labels, targets, sampled = self.sample_proposals(proposals, gt)
        image_index = torch.arange(boxes.shape[0], device=boxes.device)
        logits, deltas = self.predict(
            features, boxes.flatten(0, 1), image_index.repeat_interleave(boxes.shape[1])
        )
        with record_function("frcnn.roi.losses"):
            return self.sampled_losses(
                logits, deltas, labels.flatten(), targets.flatten(0, 1), sampled.flatten()
            )

    def sampled_losses(
        self, logits: Tensor, deltas: Tensor, labels: Tensor, targets: Tensor, sampled: Tensor
    ) -> dict[str, Tensor]:
        """Cross-entropy and smooth-L1 box loss over the sampled rows -> {"roi_cls", "roi_box"}.

        logits (R, C+1), deltas (R, C+1, 4), labels (R,) in 0..C, box-coder targets (R, 4),
        sampled (R,) bool; both are normalised by the number of sampled rows.
        """
        positive = sampled & (labels > 0)
        num_sampled = sampled.sum().clamp(min=1)
        cls_loss = F.cross_entropy(logits.float(), labels, reduction="none")
        class_deltas = deltas.gather(1, labels[:, None, None].expand(-1, 1, 4)).squeeze(1)
        box_loss = F.smooth_l1_loss(
            class_deltas.float(), targets, beta=self.smooth_l1_beta, reduction="none"
        )
        return {
            "roi_cls": torch.where(sampled, cls_loss, 0.0).sum() / num_sampled,
            "roi_box": torch.where(positive[:, None], box_loss, 0.0).sum() / num_sampled,
        }

    def sample_proposals(self, proposals: Proposals, gt: GroundTruth):
        """Match proposals + ground truth to ground truth and sample a fixed number per image.

        Returns boxes (B, S, 4), labels (B, S) in 0..num_classes, box-coder targets (B, S, 4)
        and a (B, S) mask of the truly sampled rows, S = min(batch_size_per_image, P + G).
        Rows beyond an image's sample are filler with sampled=False.
        """
        boxes = torch.cat([proposals.boxes, gt.boxes.to(proposals.boxes.dtype)], dim=1)
        candidate = torch.cat([proposals.valid, gt.valid], dim=1)
        matched = self.sampling.match(gt, boxes, False)
        gt_labels = gt.labels.gather(1, matched.clamp(min=0))
        labels = training_labels(matched, gt_labels)
        labels = torch.where(candidate, labels, IGNORED)
        sampled = self.sampling.sample(labels.clamp(max=1))
        # a fixed number of rows per image: the sampled ones first, then filler
        num_rows = min(self.sampling.batch_size_per_image, boxes.shape[1])
        rows = sampled.float().topk(num_rows, dim=1).indices
        boxes = boxes.gather(1, rows[..., None].expand(-1, -1, 4))
        matched_gt = gt.boxes.gather(
            1, matched.clamp(min=0).gather(1, rows)[..., None].expand(-1, -1, 4)
        )
        labels = labels.gather(1, rows).clamp(min=0)
        sampled = sampled.gather(1, rows)
        targets = self.box_coder.encode(matched_gt, boxes)
        targets = torch.where((sampled & (labels > 0))[..., None], targets, 0.0)
        return boxes, labels, targets, sampled

    def detect(
        self, features: list[Tensor], proposals: Proposals, image_sizes: Tensor
    ) -> Detections:
        """P2..P5, proposals (B, P) from the RPN and image_sizes (B, 2) (height, width) ->
        Detections (B, K), K = detections_per_img.

        All B x P proposals go through the heads (fixed shapes, no read-back); padding rows
        never become detections.
        """
        num_proposals = proposals.valid.shape[1]
        image_index = torch.arange(proposals.valid.shape[0], device=proposals.boxes.device)
        image_index = image_index[:, None].expand(-1, num_proposals).flatten()
        logits, deltas = self.predict(features, proposals.boxes.flatten(0, 1), image_index)
        with record_function("frcnn.roi.postprocess"):
            return self.postprocess(logits, deltas, proposals, image_sizes)

    def postprocess(
        self, logits: Tensor, deltas: Tensor, proposals: Proposals, image_sizes: Tensor
    ) -> Detections:
        """logits (B*P, C+1), deltas (B*P, C+1, 4) of proposals (B, P), image_sizes (B, 2) ->
        Detections (B, K), for the whole batch at once.

        Softmax scores, class-specific boxes decoded and clipped to their image, background,
        low scores, tiny boxes and padding proposals dropped, NMS per image and class, the
        best `detections_per_img` of each image kept.
        """
        num_proposals = proposals.valid.shape[1]
        num_classes = logits.shape[1] - 1
        scores = F.softmax(logits.float(), dim=-1)[:, 1:]
        boxes = self.box_coder.decode(deltas.float()[:, 1:], proposals.boxes.flatten(0, 1)[:, None])
        # (B, C, P): one NMS row per image and class
        scores = scores.reshape(-1, num_proposals, num_classes).transpose(1, 2)
        boxes = boxes.reshape(-1, num_proposals, num_classes, 4).transpose(1, 2)
        boxes = clip_boxes(boxes, image_sizes[:, None, :1], image_sizes[:, None, 1:])
        candidate = (scores > self.score_thresh) & is_large_enough(boxes, self.min_size)
        candidate = candidate & proposals.valid[:, None]
        kept = nms_in_rows(
            boxes.reshape(-1, num_proposals, 4),
            scores.reshape(-1, num_proposals),
            candidate.reshape(-1, num_proposals),
            self.nms_thresh,
            images=proposals.valid.shape[0],
            calls=self.nms_calls,
        )
        scores, kept = scores.flatten(1), kept.view_as(scores).flatten(1)  # (B, C * P)
        best, valid = top_k_per_image(scores, kept, self.detections_per_img)
        boxes = boxes.flatten(1, 2).gather(1, best[..., None].expand(-1, -1, 4))
        labels = torch.div(best, num_proposals, rounding_mode="floor") + 1
        return Detections(
            torch.where(valid[..., None], boxes, 0.0),
            torch.where(valid, scores.gather(1, best), 0.0),
            torch.where(valid, labels, 0),
            valid,
        )
