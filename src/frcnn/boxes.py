"""Box coder and small box helpers. All boxes are xyxy in pixels."""

import math
import os
import shutil

import torch
import torch.nn.functional as F
from packaging.version import Version
from torch import Tensor
from torchvision.ops import nms

from frcnn.checks import check_number, is_list, is_number

# exp() of a larger log-scale would blow a box past any image: cap it (torchvision's value)
DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


def check_box_coding(key: str, weights, smooth_l1_beta: float) -> None:
    """Raise ValueError naming `key`'s setting unless `weights` are four positive numbers (the
    decoded deltas are divided by them) and `smooth_l1_beta` is at least 0 (0: plain L1)."""
    four = is_list(weights) and len(weights) == 4
    if not four or not all(is_number(w) and 0 < w < math.inf for w in weights):
        raise ValueError(
            f"{key}.box_coder_weights={weights!r}: give four positive numbers [wx,wy,ww,wh]"
        )
    check_number(f"{key}.smooth_l1_beta", smooth_l1_beta, 0)


class BoxCoder:
    """Encodes boxes as (dx, dy, dw, dh) deltas relative to reference boxes, and back.

    `weights` (wx, wy, ww, wh) scale the deltas so that their losses have comparable size:
    (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the ROI heads.
    """

    def __init__(self, weights=(1.0, 1.0, 1.0, 1.0), scale_clamp: float = DEFAULT_SCALE_CLAMP):
        self.weights = tuple(float(w) for w in weights)
        self.scale_clamp = scale_clamp

    def encode(self, boxes: Tensor, reference: Tensor) -> Tensor:
        """(..., 4) target boxes and (..., 4) reference boxes -> (..., 4) deltas."""
        wx, wy, ww, wh = self.weights
        ref_cx, ref_cy, ref_w, ref_h = centres_and_sizes(reference)
        cx, cy, w, h = centres_and_sizes(boxes)
        return torch.stack(
            (
                wx * (cx - ref_cx) / ref_w,
                wy * (cy - ref_cy) / ref_h,
                ww * torch.log(w / ref_w),
                wh * torch.log(h / ref_h),
            ),
            dim=-1,
        )

    def decode(self, deltas: Tensor, reference: Tensor) -> Tensor:
        """(..., 4) deltas applied to (..., 4) reference boxes -> (..., 4) boxes.

        `reference` broadcasts against `deltas`, e.g. (N, 1, 4) proposals with (N, C, 4)
        class-specific deltas. The result has the dtype of `deltas`.
        """
        wx, wy, ww, wh = self.weights
        ref_cx, ref_cy, ref_w, ref_h = centres_and_sizes(reference.to(deltas.dtype))
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[..., 3] / wh).clamp(max=self.scale_clamp)
        cx = dx * ref_w + ref_cx
        cy = dy * ref_h + ref_cy
        half_w = 0.5 * (torch.exp(dw) * ref_w)
        half_h = 0.5 * (torch.exp(dh) * ref_h)
        return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


def centres_and_sizes(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(..., 4) xyxy boxes -> centre x, centre y, width, height, each (...) in pixels."""
    width = boxes[..., 2] - boxes[..., 0]
    height = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * width, boxes[..., 1] + 0.5 * height, width, height


def clip_boxes(boxes: Tensor, height, width) -> Tensor:
    """Clamp (..., 4) boxes to the image rectangle [0, width] x [0, height].

    `height` and `width` are numbers, or tensors that broadcast against `boxes[..., 0]` (one
    size per image, e.g. (B, 1) for (B, P, 4) boxes).
    """
    x, y = boxes[..., 0::2].clamp(min=0), boxes[..., 1::2].clamp(min=0)
    if isinstance(width, Tensor):
        x = torch.minimum(x, width[..., None].to(x.dtype))
        y = torch.minimum(y, height[..., None].to(y.dtype))
    else:
        x, y = x.clamp(max=width), y.clamp(max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def to_original_pixels(boxes: Tensor, scale_xy: Tensor, orig_size: tuple[int, int]) -> Tensor:
    """(K, 4) boxes in input pixels -> original image pixels, clipped to the original image
    (a letterboxed detection may reach into the padding)."""
    return clip_boxes(boxes / scale_xy.to(boxes).repeat(2), *orig_size)


def content_sizes(targets: list[dict]) -> Tensor:
    """(B, 2) int64 height and width of each image's content in input pixels (the rest of
    the input, right and bottom, is letterbox padding), from the batch's `orig_size` and
    `scale_xy`. Computed on the host, before the batch moves to the device."""
    orig = torch.tensor([t["orig_size"] for t in targets], dtype=torch.float64).reshape(-1, 2)
    scale = torch.stack([t["scale_xy"].cpu() for t in targets]).double().reshape(-1, 2)
    return (orig * scale.flip(1)).round().to(torch.int64)


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) -> (...) areas in square pixels."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def is_large_enough(boxes: Tensor, min_size: float) -> Tensor:
    """(..., 4) -> (...) bool: both sides at least `min_size` pixels."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & (
        (boxes[..., 3] - boxes[..., 1]) >= min_size
    )


def pairwise_intersection(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Intersection areas of (..., N, 4) with (..., M, 4) boxes -> (..., N, M), the leading
    (batch) dimensions broadcast: what IoU and IoA share. The width, then the height: never
    (..., N, M, 2) corner pairs, as the ground truth against every anchor is the training
    step's largest tensor (4 such tensors at once at most, where the pairs made 8)."""
    a, b = boxes1[..., :, None, :], boxes2[..., None, :, :]

    def overlap(low: int, high: int) -> Tensor:  # along x (coordinates 0, 2) or y (1, 3)
        return (
            torch.minimum(a[..., high], b[..., high]) - torch.maximum(a[..., low], b[..., low])
        ).clamp(min=0)

    return overlap(0, 2) * overlap(1, 3)


def pairwise_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of (..., N, 4) with (..., M, 4) boxes -> (..., N, M): `torchvision.ops.box_iou`
    (every box with every box) image by image when given (B, N, 4) and (B, M, 4); tested
    against it."""
    inter = pairwise_intersection(boxes1, boxes2)
    return inter / (box_area(boxes1)[..., :, None] + box_area(boxes2)[..., None, :] - inter)


def pairwise_ioa(boxes: Tensor, regions: Tensor) -> Tensor:
    """COCO's IoU of (..., N, 4) boxes with (..., K, 4) crowd regions -> (..., N, K): the
    intersection over the box's own area (a box inside a crowd region overlaps it fully)."""
    return pairwise_intersection(boxes, regions) / box_area(boxes).clamp(min=1e-12)[..., :, None]


def nms_rows(boxes: Tensor, scores: Tensor, iou_thresh: float, calls: int) -> Tensor:
    """Greedy NMS within each row, as ONNX's `NonMaxSuppression` computes it.

    boxes (R, N, 4), scores (R, 1, N): every row (one image and class, or image and level) is
    independent; a negative score marks a box that takes no part (neither kept nor
    suppressing). Returns the kept boxes as (K, 3) int64 rows (row, 0, column).

    The rows' boxes are shifted apart by more than any box (what torchvision's `batched_nms`
    does below its size threshold) and go to `calls` torchvision `nms` calls, on `calls` equal
    groups of consecutive rows (1: the whole batch; the batch size: one per image).
    """
    rows = scores.shape[0]
    row, column = (scores[:, 0] >= 0).nonzero(as_tuple=True)
    # float64: rows lie (max coordinate + 1) apart; in float32 that rounds coordinates (to
    # 1/16 px at 16 images x 80 classes), so an image's detections would depend on its
    # place in the batch
    picked = boxes[row, column].double()
    shifted = picked + (row.double() * (boxes.max().double() + 1))[:, None]
    picked_scores = scores[row, 0, column].double()
    if calls == 1:
        keep = nms(shifted, picked_scores, iou_thresh)
    else:  # nonzero lists the rows in order: each call's boxes are a contiguous run
        counts = torch.bincount(row // (rows // calls), minlength=calls).tolist()
        keep, start = [], 0
        for count in counts:
            if count:  # an image without candidates: no call
                run = slice(start, start + count)
                keep.append(nms(shifted[run], picked_scores[run], iou_thresh) + start)
            start += count
        keep = torch.cat(keep) if keep else row[:0]
    row, column = row[keep], column[keep]
    return torch.stack([row, torch.zeros_like(row), column], dim=1)


class NMSInRows(torch.autograd.Function):
    """`nms_rows` as the ONNX exporter sees it: the `NonMaxSuppression` operator with the rows
    as its batch (`symbolic`), so the graph needs nothing else."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, iou_thresh: float) -> Tensor:
        return nms_rows(boxes, scores, iou_thresh, 1)  # (what the graph holds is `symbolic`)

    @staticmethod
    def symbolic(g, boxes, scores, iou_thresh: float):
        def constant(value, dtype):
            return g.op("Constant", value_t=torch.tensor([value], dtype=dtype))

        # max_output_boxes_per_class must be given (0 would keep nothing): every box may stay
        every_box = g.op("Gather", g.op("Shape", boxes), constant(1, torch.int64), axis_i=0)
        # scores are probabilities or -1 (no part): -0.5 separates them
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            every_box,
            constant(iou_thresh, torch.float32),
            constant(-0.5, torch.float32),
        )


NMS_CALLS = ("auto", "image", "batch", "triton")
TRITON_FOR_NMS = "3.6"  # the Triton the kernel was checked with on a GPU (compiled)


def triton_missing() -> str | None:
    """Why `nms_calls="triton"` cannot run here (no triton, one older than 3.6, or no C
    compiler for the launcher Triton builds), or None."""
    try:
        import triton
    except ImportError:
        return "no triton package (PyTorch's CUDA builds bring it on Linux)"
    if Version(triton.__version__) < Version(TRITON_FOR_NMS):
        return (
            f"triton {triton.__version__} is older than {TRITON_FOR_NMS}, the one it was checked "
            "with (PyTorch 2.11 and newer bring it)"
        )
    # (Triton's own search: $CC, else gcc, else clang)
    if not os.environ.get("CC") and not (shutil.which("gcc") or shutil.which("clang")):
        return "no C compiler (gcc or clang, or $CC), which Triton needs to build its launcher"
    return None


def nms_in_rows(
    boxes: Tensor,
    scores: Tensor,
    candidate: Tensor,
    iou_thresh: float,
    images: int = 1,
    calls: str = "image",
) -> Tensor:
    """Greedy NMS within each row: (R, N, 4) boxes, (R, N) scores in [0, 1], (R, N) bool
    candidates -> (R, N) bool, True where a candidate survives.

    A row is one image and one class (or one FPN level), the rows of an image consecutive, R =
    `images` x rows per image: boxes suppress each other only within their row, and boxes that
    are no candidates take no part. `calls`: one torchvision NMS call per image (a host wait
    each on a GPU, small N^2 masks), one for the batch (one wait, one (R*N)^2 mask), or
    "triton": on CUDA tensors one Triton kernel for all rows, without a host wait
    (frcnn.nms_kernel; elsewhere the calls per image). The kept boxes are the same.
    """
    masked = torch.where(candidate, scores, -1.0)
    if torch.onnx.is_in_onnx_export():
        kept = NMSInRows.apply(boxes, masked[:, None], iou_thresh)
    elif calls == "triton" and boxes.is_cuda and not torch.compiler.is_compiling():
        from frcnn.nms_kernel import greedy_nms_rows  # (triton: with PyTorch's CUDA builds)

        return greedy_nms_rows(boxes, masked, iou_thresh)
    else:  # a call per image needs their count: torch.export, tracing a symbolic batch, makes one
        per_image = calls != "batch" and isinstance(images, int)
        kept = nms_rows(boxes, masked[:, None], iou_thresh, images if per_image else 1)
    survivors = torch.zeros_like(candidate)
    return survivors.index_put((kept[:, 0], kept[:, 2]), torch.ones_like(kept[:, 0]).bool())


def top_k_per_image(scores: Tensor, kept: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best kept entries of each image: scores (B, M), kept (B, M) bool ->
    indices (B, k) into M, best first, and (B, k) bool valid, True on a prefix of each row
    (False where an image has fewer than k kept entries; their indices point anywhere).
    """
    available = min(k, scores.shape[1])
    values, indices = torch.where(kept, scores, -torch.inf).topk(available, dim=1)
    valid = values > -torch.inf
    if available < k:  # fewer entries than asked for: pad, so the count is always k
        indices = F.pad(indices, (0, k - available))
        valid = torch.cat([valid, valid.new_zeros(valid.shape[0], k - available)], dim=1)
    return indices, valid
