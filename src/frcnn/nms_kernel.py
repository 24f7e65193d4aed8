"""Greedy NMS of many rows in one Triton kernel, without a host wait (`model.nms_calls=triton`).

torchvision's CUDA `nms` returns the kept indices, whose count the host must read: a wait per
call, 16 per step at batch 16, each draining the GPU's queue while the host stands still. Here
one program per row (one image and FPN level, or one image and class) walks its boxes in score
order and writes a (R, N) mask: the rows run side by side and the host never waits.

The arithmetic is torchvision's kernel's (float32 IoU, `inter / (area_i + area_j - inter)` with
IEEE division, compared with the float32 threshold; no fused multiply-add): the same boxes are
kept (tests/test_nms_kernel.py, against `torchvision.ops.nms` row by row, on the CPU in
Triton's interpreter, `TRITON_INTERPRET=1`). `nms_in_rows` takes it for CUDA tensors only.
"""

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _greedy_rows(boxes_ptr, counts_ptr, keep_ptr, n, iou_thresh, BLOCK: tl.constexpr):
    """Program r: row r's boxes (n, 4), best score first, of which the first counts[r] take
    part -> keep[r] (n,) int8, 1 where a box survives."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    count = tl.load(counts_ptr + row)
    inside = offs < count
    boxes = boxes_ptr + row * n * 4
    x0 = tl.load(boxes + offs * 4, mask=inside, other=0.0)
    y0 = tl.load(boxes + offs * 4 + 1, mask=inside, other=0.0)
    x1 = tl.load(boxes + offs * 4 + 2, mask=inside, other=0.0)
    y1 = tl.load(boxes + offs * 4 + 3, mask=inside, other=0.0)
    areas = (x1 - x0) * (y1 - y0)
    alive = inside
    for i in range(count):
        # box i has met every better box: alive now means kept
        if tl.sum(tl.where(offs == i, alive, False).to(tl.int32)) > 0:
            ix0 = tl.load(boxes + i * 4)
            iy0 = tl.load(boxes + i * 4 + 1)
            ix1 = tl.load(boxes + i * 4 + 2)
            iy1 = tl.load(boxes + i * 4 + 3)
            w = tl.maximum(tl.minimum(ix1, x1) - tl.maximum(ix0, x0), 0.0)
            h = tl.maximum(tl.minimum(iy1, y1) - tl.maximum(iy0, y0), 0.0)
            inter = w * h
            iou = tl.math.div_rn(inter, (ix1 - ix0) * (iy1 - iy0) + areas - inter)
            alive = alive & ((offs <= i) | ~(iou > iou_thresh))  # a NaN IoU suppresses nothing
    tl.store(keep_ptr + row * n + offs, alive.to(tl.int8), mask=offs < n)


def greedy_nms_rows(boxes: Tensor, scores: Tensor, iou_thresh: float) -> Tensor:
    """Greedy NMS within each row: boxes (R, N, 4) xyxy, scores (R, N), negative where a box
    takes no part -> (R, N) bool, True where a box survives. Ties in score go to the lower
    index, as torchvision's stable sort sends them."""
    rows, n = scores.shape
    if rows == 0 or n == 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    scores = torch.where(scores >= 0, scores, -1.0)  # NaN too: it would sort first
    order = scores.sort(dim=1, descending=True, stable=True).indices
    ordered = boxes.gather(1, order[..., None].expand(-1, -1, 4)).float().contiguous()
    counts = (scores >= 0).sum(1, dtype=torch.int32)  # the candidates sort first
    keep = torch.empty((rows, n), dtype=torch.int8, device=scores.device)
    block = triton.next_power_of_2(n)
    _greedy_rows[(rows,)](
        ordered, counts, keep, n, iou_thresh, BLOCK=block,
        num_warps=min(16, max(1, block // 256)), enable_fp_fusion=False,
    )  # fmt: skip
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, order, keep.bool())
