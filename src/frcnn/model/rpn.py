"""Region proposal network: head, proposal selection and losses."""

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
from frcnn.model.matching import RPN_SAMPLING, Sampling, training_labels
from frcnn.structures import GroundTruth, Proposals

# Where an image has fewer proposals than the fixed count, the rest are this harmless box
# (finite deltas and IoUs) and are masked out by the `valid` mask that goes with them.
PADDING_BOX = (0.0, 0.0, 1.0, 1.0)


class RPNHead(nn.Module):
    """Shared 3x3 conv + ReLU, then per-anchor objectness logits and box deltas, per level."""

    def __init__(self, in_channels: int, num_anchors: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """[P_l (B, C, H_l, W_l)] -> objectness (B, N) logits and deltas (B, N, 4).

        N = sum over levels of H_l * W_l * A, flattened in the anchors' order (row, column,
        anchor), so that column n belongs to anchor n of `AnchorGenerator`.
        """
        logits, deltas = [], []
        for x in features:
            x = F.relu(self.conv(x))
            obj = self.objectness(x)
            b, a, h, w = obj.shape
            logits.append(obj.permute(0, 2, 3, 1).reshape(b, -1))
            deltas.append(
                self.deltas(x).view(b, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, 4)
            )
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


class RPN(nn.Module):
    """Proposes up to `post_nms_top_n` object boxes per image and computes the RPN losses.

    Counts come in (train, test) pairs, chosen by the module's training flag. Pre-NMS top-n is
    per FPN level, post-NMS top-n per image (as in torchvision and Detectron2).
    """

    def __init__(
        self,
        in_channels: int,
        num_anchors: int,
        pre_nms_top_n_train: int = 2000,
        pre_nms_top_n_test: int = 1000,
        post_nms_top_n_train: int = 2000,
        post_nms_top_n_test: int = 1000,
        nms_thresh: float = 0.7,
        nms_calls: str = "image",
        sampling: Sampling = RPN_SAMPLING,
        min_size: float = 1e-3,
        score_thresh: float = 0.0,
        box_coder_weights=(1.0, 1.0, 1.0, 1.0),
        smooth_l1_beta: float = 1.0 / 9,
    ):
        super().__init__()
        for name, count in (
            ("pre_nms_top_n_train", pre_nms_top_n_train),
            ("pre_nms_top_n_test", pre_nms_top_n_test),
            ("post_nms_top_n_train", post_nms_top_n_train),
            ("post_nms_top_n_test", post_nms_top_n_test),
        ):
            check_number(f"model.rpn.{name}", count, 1, integer=True)
        check_number("model.rpn.nms_thresh", nms_thresh, 0.0, 1.0, open_low=True)
        check_number("model.rpn.min_size", min_size, 0.0)
        check_number("model.rpn.score_thresh", score_thresh, 0.0, 1.0)
        check_box_coding("model.rpn", box_coder_weights, smooth_l1_beta)
        self.head = RPNHead(in_channels, num_anchors)
        self.box_coder = BoxCoder(box_coder_weights)
        self.pre_nms_top_n = {True: pre_nms_top_n_train, False: pre_nms_top_n_test}
        self.post_nms_top_n = {True: post_nms_top_n_train, False: post_nms_top_n_test}
        self.nms_thresh, self.nms_calls = nms_thresh, nms_calls
        self.sampling = sampling
        self.min_size = min_size
        self.score_thresh = score_thresh
        self.smooth_l1_beta = smooth_l1_beta
        # a buffer, on the model's device: a tensor made from the tuple at every step would be
        # a host-to-device copy, which waits for the device
        self.register_buffer("padding_box", torch.tensor(PADDING_BOX), persistent=False)

    def forward(
        self,
        features: list[Tensor],
        anchors: list[Tensor],
        image_sizes: Tensor,
        gt: GroundTruth | None = None,
    ) -> tuple[Proposals, dict[str, Tensor]]:
        """P2..P6, their anchors and (B, 2) image sizes -> Proposals (B, P), losses. Proposals
        are clipped to each image's (height, width).

        `gt` (boxes (B, G, 4), labels, valid (B, G)) asks for the losses {"rpn_cls", "rpn_box"};
        without it the losses dict is empty.
        """
        logits, deltas = self.outputs(features)
        level_sizes = [a.shape[0] for a in anchors]
        all_anchors = torch.cat(anchors)
        with record_function("frcnn.rpn.select_proposals"):
            proposals = self.select_proposals(
                logits.detach(), deltas.detach(), all_anchors, level_sizes, image_sizes
            )
        if gt is None:
            return proposals, {}
        with record_function("frcnn.rpn.losses"):
            return proposals, self.losses(logits, deltas, all_anchors, gt)

    def outputs(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """[P_l] -> objectness logits (B, A) and deltas (B, A, 4), float32 (also under
        autocast: box coordinates need the precision), before any selection."""
        with record_function("frcnn.rpn.head"):
            logits, deltas = self.head(features)
            return logits.float(), deltas.float()

    def select_proposals(
        self,
        logits: Tensor,
        deltas: Tensor,
        anchors: Tensor,
        level_sizes: list[int],
        image_sizes: Tensor,
    ) -> Proposals:
        """Top-n per level, decode, clip, drop tiny boxes, NMS per image and level, top-n.

        logits (B, A), deltas (B, A, 4), anchors (A, 4), image_sizes (B, 2) (height, width)
        -> Proposals (B, P). Fixed shapes throughout (each level's top-n padded to the largest
        level's), so the same code runs batched on a GPU and exports to ONNX.
        """
        pre_nms_top_n = self.pre_nms_top_n[self.training]
        per_level = min(pre_nms_top_n, max(level_sizes))
        top_idx, present = [], []
        start = 0
        for size in level_sizes:
            idx = logits[:, start : start + size].topk(min(pre_nms_top_n, size), dim=1).indices
            missing = per_level - idx.shape[1]  # a level smaller than the others: padding
            top_idx.append(F.pad(idx + start, (0, missing)))
            present.append(torch.arange(per_level, device=logits.device) < idx.shape[1])
            start += size
        top_idx = torch.cat(top_idx, dim=1)  # (B, L * per_level), level by level
        present = torch.cat(present)

        scores = torch.sigmoid(logits.gather(1, top_idx))
        boxes = self.box_coder.decode(
            deltas.gather(1, top_idx[..., None].expand(-1, -1, 4)), anchors[top_idx]
        )
        boxes = clip_boxes(boxes, image_sizes[:, :1], image_sizes[:, 1:])
        candidate = present & is_large_enough(boxes, self.min_size)
        candidate = candidate & (scores >= self.score_thresh)
        # one NMS row per image and level
        kept = nms_in_rows(
            boxes.reshape(-1, per_level, 4),
            scores.reshape(-1, per_level),
            candidate.reshape(-1, per_level),
            self.nms_thresh,
            images=boxes.shape[0],
            calls=self.nms_calls,
        ).view_as(candidate)
        keep, valid = top_k_per_image(scores, kept, self.post_nms_top_n[self.training])
        # padding rows (an image, even a whole batch, may legally have no proposal: a
        # diverging or odd model) get a harmless box
        boxes = boxes.gather(1, keep[..., None].expand(-1, -1, 4))
        boxes = torch.where(valid[..., None], boxes, self.padding_box)
        return Proposals(boxes, valid)

    def losses(
        self, logits: Tensor, deltas: Tensor, anchors: Tensor, gt: GroundTruth
    ) -> dict[str, Tensor]:
        """Objectness BCE and smooth-L1 box loss over a balanced sample of anchors per image.

        logits (B, N), deltas (B, N, 4), anchors (N, 4). Both losses are normalised by the
        number of sampled anchors in the batch.
        """
        matched = self.sampling.match(gt, anchors, True)
        labels = training_labels(matched)
        sampled = self.sampling.sample(labels)
        positive = sampled & (labels == 1)
        num_sampled = sampled.sum().clamp(min=1)

        matched_boxes = gt.boxes.gather(1, matched.clamp(min=0)[..., None].expand(-1, -1, 4))
        targets = self.box_coder.encode(matched_boxes, anchors[None])
        targets = torch.where(positive[..., None], targets, 0.0)
        box_loss = F.smooth_l1_loss(
            deltas.float(), targets, beta=self.smooth_l1_beta, reduction="none"
        )
        cls_loss = F.binary_cross_entropy_with_logits(
            logits.float(), labels.clamp(min=0).float(), reduction="none"
        )
        return {
            "rpn_cls": torch.where(sampled, cls_loss, 0.0).sum() / num_sampled,
            "rpn_box": torch.where(positive[..., None], box_loss, 0.0).sum() / num_sampled,
        }
