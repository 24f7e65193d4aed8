"""Anchor boxes for every FPN level, cached per feature-map size, device and dtype."""

import torch
from torch import Tensor, nn

from frcnn.checks import check_number, is_list, typed_setting

DEFAULT_SIZES = ((32,), (64,), (128,), (256,), (512,))
DEFAULT_ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * 5
DEFAULT_STRIDES = (4, 8, 16, 32, 64)


def cell_anchors(sizes, aspect_ratios) -> Tensor:
    """The anchors centred on (0, 0) for one level -> (len(ratios) * len(sizes), 4).

    An aspect ratio is height / width; every anchor of one size has the area size**2.
    Corners are rounded to whole pixels, as in torchvision and Detectron2's legacy anchors.
    """
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


def check_levels(key: str, value, nested: bool) -> None:
    """Raise ValueError naming `key` unless `value` holds an entry per FPN level: a list of
    numbers each where `nested` (sizes, aspect ratios), else a number (strides). A flat list
    of sizes, as torchvision's one size per level, failed with a TypeError."""
    if is_list(value) and all(is_list(entry) == nested for entry in value):
        return
    entries = value if is_list(value) else [value]
    if nested:
        example = [entry if is_list(entry) else [entry] for entry in entries]
    else:
        example = [entry[0] if is_list(entry) and entry else entry for entry in entries]
    what = "a list of numbers" if nested else "a number"
    raise ValueError(f"{key}={value!r}: {what} per FPN level, e.g. {typed_setting(key, example)}")


class AnchorGenerator(nn.Module):
    """Anchors for all levels of one input size, identical for every image of a batch.

    Level l has one anchor per (location, size, ratio), ordered location-major (row, column)
    then anchor, matching the (H, W, A) flattening of the RPN head's outputs.
    `offset` places anchor centres at (offset + index) * stride: 0 like torchvision, 0.5 for
    centres in the middle of each feature cell.
    """

    def __init__(
        self,
        sizes=DEFAULT_SIZES,
        aspect_ratios=DEFAULT_ASPECT_RATIOS,
        strides=DEFAULT_STRIDES,
        offset: float = 0.0,
    ):
        super().__init__()
        check_levels("model.anchors.sizes", sizes, nested=True)
        check_levels("model.anchors.aspect_ratios", aspect_ratios, nested=True)
        check_levels("model.anchors.strides", strides, nested=False)
        if not len(sizes) == len(aspect_ratios) == len(strides):
            raise ValueError(
                f"anchors: sizes ({len(sizes)} levels), aspect_ratios ({len(aspect_ratios)}) and "
                f"strides ({len(strides)}) must have one entry per FPN level"
            )
        for level, (level_sizes, ratios, stride) in enumerate(
            zip(sizes, aspect_ratios, strides, strict=True)
        ):
            for size in level_sizes:
                check_number(f"model.anchors.sizes[{level}]", size, 0, open_low=True)
            for ratio in ratios:
                check_number(f"model.anchors.aspect_ratios[{level}]", ratio, 0, open_low=True)
            check_number(f"model.anchors.strides[{level}]", stride, 1, integer=True)
        self.sizes = tuple(tuple(s) for s in sizes)
        self.aspect_ratios = tuple(tuple(r) for r in aspect_ratios)
        self.strides = tuple(strides)
        self.offset = float(offset)
        self._cache: dict = {}

    def num_anchors_per_location(self) -> list[int]:
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios, strict=True)]

    def forward(self, feature_shapes: list[tuple[int, int]], device, dtype=torch.float32):
        """Feature-map sizes (H_l, W_l) per level -> list of (H_l * W_l * A_l, 4) anchors."""
        key = (tuple(feature_shapes), torch.device(device), dtype)
        if key not in self._cache:
            self._cache[key] = [
                self._grid_anchors(shape, stride, sizes, ratios).to(device, dtype)
                for shape, stride, sizes, ratios in zip(
                    feature_shapes, self.strides, self.sizes, self.aspect_ratios, strict=True
                )
            ]
        return self._cache[key]

    def _grid_anchors(self, shape, stride, sizes, ratios) -> Tensor:
        height, width = shape
        shifts_x = (torch.arange(width, dtype=torch.float32) + self.offset) * stride
        shifts_y = (torch.arange(height, dtype=torch.float32) + self.offset) * stride
        shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
        shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
        shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
        return (shifts[:, None, :] + cell_anchors(sizes, ratios)[None, :, :]).reshape(-1, 4)
