"""Multi-scale RoIAlign: each box pooled from its FPN level, all boxes in one weighted gather.

The sampling is torchvision's `roi_align(aligned=False)` to the last bit (tested), written as a
fixed number of bilinear taps per output bin so that one `F.embedding_bag` pools every box of
every level: no per-level split (no host sync) and a vectorised backward. ONNX has no such
gather, so the export pools level by level with torchvision's `roi_align` (ONNX `RoiAlign`):
the same values (tested), chosen by `pooler()`.
"""

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import roi_align

from frcnn.boxes import box_area


def assign_levels(
    boxes: Tensor, strides, canonical_size: float = 224, canonical_level: int = 4
) -> Tensor:
    """FPN paper eq. 1: the pyramid level that pools each box -> index into `strides`.

    A box of side `canonical_size` goes to level `canonical_level` (P4), one twice as large to
    P5, and so on, clamped to the levels present (strides 2**k for k = k_min..k_max).
    """
    k_min, k_max = round(math.log2(strides[0])), round(math.log2(strides[-1]))
    side = torch.sqrt(box_area(boxes))
    level = torch.floor(canonical_level + torch.log2(side / canonical_size) + 1e-6)
    return level.clamp(k_min, k_max).to(torch.int64) - k_min


def bilinear_taps(coords: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
    """The two cells and weights of 1-D bilinear interpolation, by torchvision's rules.

    coords (R, n) in cells (cell centres at integers), size (R, 1) cells on that axis ->
    indices (R, n, 2) int64 and weights (R, n, 2). A point more than one cell outside the map
    weighs nothing; a point between the last centre and the edge takes the edge cell alone.
    """
    inside = (coords >= -1) & (coords <= size)
    coords = torch.minimum(coords.clamp(min=0), size - 1)
    low = coords.floor()
    high = torch.minimum(low + 1, size - 1)
    frac = coords - low
    indices = torch.stack([low, high], dim=-1).to(torch.int64)
    weights = torch.stack([1 - frac, frac], dim=-1) * inside[..., None]
    return indices, weights


@functools.lru_cache(maxsize=16)
def level_table(shapes: tuple, strides: tuple, device) -> Tensor:
    """(L, 4) int64: stride, height, width and the cells of one image on the levels before
    each (times the batch size: the level's first row in the stacked pyramid).

    Cached: the input shape is fixed, and building it anew would cost a host-device copy. (Not
    keyed by the batch size, which an exported graph keeps symbolic.)
    """
    rows, before = [], 0
    for (height, width), stride in zip(shapes, strides, strict=True):
        rows.append([stride, height, width, before])
        before += height * width
    return torch.tensor(rows, device=device)


def multiscale_roi_align(
    features: list[Tensor],
    boxes: Tensor,
    image_index: Tensor,
    strides,
    output_size: int,
    sampling_ratio: int,
    canonical_size: float = 224,
    canonical_level: int = 4,
) -> Tensor:
    """RoIAlign of every box from its own FPN level, as one weighted gather, in the features'
    dtype.

    features: [P_l (B, C, H_l, W_l)], boxes: (R, 4) in input pixels, image_index: (R,) int
    -> (R, C, output_size, output_size).

    The sampling is torchvision's `roi_align(aligned=False)` with a fixed `sampling_ratio`: each
    output bin averages sampling_ratio**2 bilinear samples, i.e. it is a weighted sum of a fixed
    number of feature cells. So the pyramid is stacked as one channels-last table of cells and
    all bins of all levels are a single `embedding_bag`: no per-level split (no host sync) and
    a vectorised backward, where torchvision's CPU backward is a single-threaded loop.
    """
    num_images, channels = features[0].shape[:2]
    n = output_size * sampling_ratio  # samples per box side
    with torch.no_grad():  # geometry, not learned: no gradient to the boxes (as torchvision)
        levels = assign_levels(boxes, strides, canonical_size, canonical_level)
        shapes = tuple(tuple(f.shape[-2:]) for f in features)
        table = level_table(shapes, tuple(strides), boxes.device)
        stride, height, width, before = table[levels].unbind(1)
        first = before * num_images
        box = boxes / stride[:, None]
        # sample centres: bin p, sample k within it (torchvision's arithmetic, to the last bit)
        k = torch.arange(n, device=boxes.device)
        p, k = (k // sampling_ratio)[None], (k % sampling_ratio + 0.5)[None]
        bin_w = (box[:, 2:3] - box[:, :1]).clamp(min=1) / output_size
        bin_h = (box[:, 3:4] - box[:, 1:2]).clamp(min=1) / output_size
        x = box[:, :1] + p * bin_w + k * bin_w / sampling_ratio
        y = box[:, 1:2] + p * bin_h + k * bin_h / sampling_ratio
        ix, wx = bilinear_taps(x, width[:, None])
        iy, wy = bilinear_taps(y, height[:, None])
        # bin (i, j) takes rows i*s..i*s+s-1 and columns j*s..j*s+s-1 of the samples, 2 taps each
        shape = (-1, output_size, 1, 2 * sampling_ratio, 1)
        iy, wy = iy.reshape(shape), wy.reshape(shape)
        ix = ix.reshape(-1, 1, output_size, 1, 2 * sampling_ratio)
        wx = wx.reshape(ix.shape)
        per_box = (-1, 1, 1, 1, 1)
        row = image_index.view(per_box) * height.view(per_box) + iy
        cells = first.view(per_box) + row * width.view(per_box) + ix
        weights = wy * wx / sampling_ratio**2
    # in the features' dtype: under autocast no float32 copy of the whole pyramid
    stacked = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, channels) for f in features])
    pooled = F.embedding_bag(
        cells.flatten(3).flatten(0, 2),
        stacked,
        per_sample_weights=weights.flatten(3).flatten(0, 2).to(stacked.dtype),
        mode="sum",
    )
    return pooled.view(-1, output_size, output_size, channels).permute(0, 3, 1, 2)


def roi_align_per_level(
    features: list[Tensor],
    boxes: Tensor,
    image_index: Tensor,
    strides,
    output_size: int,
    sampling_ratio: int,
    canonical_size: float = 224,
    canonical_level: int = 4,
) -> Tensor:
    """`multiscale_roi_align` as one torchvision `roi_align` per level (exports as ONNX
    `RoiAlign`, one per level, and one gather back into the boxes' order); same arguments."""
    levels = assign_levels(boxes, strides, canonical_size, canonical_level)
    rois = torch.cat([image_index[:, None].to(boxes.dtype), boxes], dim=1)
    pooled, rows = [], []
    for level, (feature, stride) in enumerate(zip(features, strides, strict=True)):
        rows.append((levels == level).nonzero().squeeze(1))
        pooled.append(roi_align(
            feature.float(), rois[rows[-1]], output_size, 1.0 / stride, sampling_ratio,
            aligned=False,
        ))  # fmt: skip
    # one gather of rows back into the boxes' order: at 400 px a third of the time of scattering
    # each level into zeros (onnxruntime's ScatterND, 65 -> 25 ms of 850 at batch 1)
    flat = torch.cat(pooled).flatten(1)
    return flat[torch.argsort(torch.cat(rows))].view(-1, *pooled[0].shape[1:])


POOLERS = ("own", "torchvision")


def pooler(choice: str = "own"):
    """The multi-scale RoIAlign to run: this module's one gather ("own"), or torchvision's
    `roi_align` level by level ("torchvision": a host wait per level; its CUDA kernels may be
    faster, which only a GPU can say); the per-level one while exporting to ONNX."""
    if choice == "torchvision" or torch.onnx.is_in_onnx_export():
        return roi_align_per_level
    return multiscale_roi_align
