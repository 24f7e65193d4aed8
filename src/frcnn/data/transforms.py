"""One transform path for every source: decode, RGB, resize to S x S, flip, boxes follow."""

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional

from frcnn.boxes import content_sizes
from frcnn.checks import check_number, is_list, is_number, typed_setting
from frcnn.structures import Targets

RESIZE_MODES = ("letterbox", "stretch")

try:  # the `heic` extra: a phone's HEIC photos open as any image, in every process that decodes
    from pillow_heif import register_heif_opener
except ImportError:
    pass
else:
    register_heif_opener()


@dataclass
class Record:
    """One raw sample from a source, before any transform.

    image: a PIL image or encoded bytes; image_id: the source's integer id (`id_number` of
    one that is a string); boxes: (K, 4) xyxy in original pixels (of the image
    turned upright as its EXIF orientation says, see `exif_turn`); labels: (K,) in
    1..num_classes. Where the source knows them: iscrowd (K,) bool, crowd regions that
    evaluation ignores and training never sees; area (K,) the annotation's area in original
    pixels (COCO's, from the mask), which sets its small / medium / large range; size, the
    (width, height) the annotation file records for the image.
    """

    image: Image.Image | bytes
    boxes: np.ndarray
    labels: np.ndarray
    image_id: int
    iscrowd: np.ndarray | None = None
    area: np.ndarray | None = None
    size: tuple[int, int] | None = None

    def subset(self, keep: np.ndarray) -> "Record":
        """The record with only the annotations where `keep` (K,) is True."""
        return Record(
            self.image,
            np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)[keep],
            np.asarray(self.labels, dtype=np.int64).reshape(-1)[keep],
            self.image_id,
            None if self.iscrowd is None else np.asarray(self.iscrowd, dtype=bool)[keep],
            None if self.area is None else np.asarray(self.area, dtype=np.float32)[keep],
            self.size,
        )


def id_number(key: str | bytes) -> int:
    """A number for an image that a string (a file name, an id such as Open Images'
    `0002b66c9c498e`) or bytes identify: the same in every worker, process and epoch, and
    below 2**48 (exact in a float64)."""
    data = key.encode() if isinstance(key, str) else key
    return int.from_bytes(hashlib.blake2b(data, digest_size=6).digest(), "big")


@dataclass
class Transform:
    """Resize to a fixed `size` x `size` uint8 image; boxes follow exactly.

    letterbox keeps the aspect ratio and pads right and bottom with zeros; stretch scales the
    two axes independently. `flip_prob` mirrors the image content horizontally (training).

    `scale_jitter` (lo, hi), training's large-scale jitter: the resize scale is multiplied by
    a factor drawn uniformly from [lo, hi], and an image larger than S x S is cropped to it at
    a random place (a smaller one is padded, as always): the content stays top-left and its
    size is what `image_sizes` reports. Boxes follow, are clipped to the content, and those
    left with less than `min_visible` of their area are dropped (crowd regions alike); the
    annotations' areas shrink with the share of the box that stays. The crop offset is not
    kept: `scale_xy` maps sizes, not positions, back to the original image (training only).
    """

    size: int = 400
    resize: str = "letterbox"
    flip_prob: float = 0.0
    scale_jitter: tuple[float, float] | None = None
    min_visible: float = 0.5

    def __post_init__(self):
        check_number("data.image_size", self.size, 1, integer=True)
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"data.resize={self.resize!r}: {' or '.join(RESIZE_MODES)}")
        check_number("data.flip_prob", self.flip_prob, 0, 1)  # (`flip_prob=yes`: a string)
        jitter = self.scale_jitter
        if jitter is not None:  # a bare number, not a list: a TypeError in the data module
            low_high = is_list(jitter) and len(jitter) == 2 and all(map(is_number, jitter))
            if not low_high or not 0 < jitter[0] <= jitter[1]:
                raise ValueError(
                    f"{typed_setting('data.scale_jitter', jitter)}: must be [low, high] with "
                    "0 < low <= high, e.g. data.scale_jitter=[0.5,2.0] (null: none)"
                )
            self.scale_jitter = (float(jitter[0]), float(jitter[1]))
        check_number("data.min_visible", self.min_visible, 0, 1)

    def __call__(self, record: Record, rng: np.random.Generator | None = None, report=None):
        """Record -> (uint8 (3, S, S) image, target dict of the batch contract).

        The steps, in the order they draw from `rng`: decode, the resize (with its jitter
        factor), the boxes cleaned and scaled, the crop (jitter), the flip, the target.
        `report(reason, image_id, detail)`, if given, hears of boxes clipped to the image and
        of boxes dropped because they have no area left.
        """
        image, (width, height) = decoded(record, report, self.reduction)
        rng = rng or np.random.default_rng()
        new_w, new_h = self.resized_size(width, height, rng)
        scale_xy = np.array([new_w / width, new_h / height], dtype=np.float32)
        boxes, labels, keep = scaled_boxes(record, width, height, scale_xy, report)
        content = resize(image, new_h, new_w)
        visible = np.ones(len(boxes), dtype=np.float32)
        if self.scale_jitter:
            content, boxes, visible = self.crop(content, boxes, rng)
            keep &= visible >= max(self.min_visible, 1e-6)  # crops: no report, no bad input
        if self.flip_prob > 0 and rng.random() < self.flip_prob:
            content, boxes = flipped(content, boxes)
        canvas = torch.zeros((3, self.size, self.size), dtype=torch.uint8)
        canvas[:, : content.shape[1], : content.shape[2]] = content
        return canvas, make_target(record, boxes, labels, keep, visible, (height, width), scale_xy)

    def resized_size(self, width: int, height: int, rng: np.random.Generator) -> tuple[int, int]:
        """The content's (width, height) in the S x S input: letterboxed or stretched, times a
        jitter factor drawn from `rng` where `scale_jitter` is set."""
        factor = rng.uniform(*self.scale_jitter) if self.scale_jitter else 1.0
        if self.resize == "letterbox":
            scale = self.size / max(width, height) * factor
            new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        else:
            new_w = new_h = max(1, round(self.size * factor))
        if not self.scale_jitter:  # rounding never leaves the canvas
            new_w, new_h = min(new_w, self.size), min(new_h, self.size)
        return new_w, new_h

    def reduction(self, width: int, height: int) -> int:
        """How much smaller (1, 2, 4 or 8 times) a JPEG of `width` x `height` may be decoded:
        the most that still leaves its content at least as large as the resize can make it
        (jitter's largest factor included), and that divides both sides, so that the smaller
        image covers exactly the same ground (camera sizes are multiples of 8)."""
        largest = self.size * (self.scale_jitter[1] if self.scale_jitter else 1.0)
        side = max(width, height) if self.resize == "letterbox" else min(width, height)
        return next(
            (s for s in (8, 4, 2) if side / s >= largest and width % s == 0 == height % s), 1
        )

    def crop(self, content: torch.Tensor, boxes: np.ndarray, rng: np.random.Generator):
        """A random S x S window of a larger (jittered) image; boxes follow, clipped to it ->
        (content, boxes, the share of each box's area that stays)."""
        _, new_h, new_w = content.shape
        x0 = int(rng.integers(0, new_w - self.size + 1)) if new_w > self.size else 0
        y0 = int(rng.integers(0, new_h - self.size + 1)) if new_h > self.size else 0
        content = content[:, y0 : y0 + self.size, x0 : x0 + self.size]
        full = box_areas(boxes)
        kept_h, kept_w = content.shape[1:]
        boxes = np.clip(boxes - [x0, y0, x0, y0], 0, [kept_w, kept_h, kept_w, kept_h])
        return content, boxes, box_areas(boxes) / np.maximum(full, 1e-12)


class SizeMismatch(ValueError):
    """An image that is not the size its annotation records (resized or replaced since it was
    annotated): its boxes would be drawn on other pixels."""


def decoded(record: Record, report=None, reduction=None) -> tuple[Image.Image, tuple[int, int]]:
    """The record's image decoded (a corrupt file fails here), upright (EXIF, `exif_turn`), RGB,
    and its upright (width, height): the pixels its boxes are in. An image whose size is
    neither the one its annotation records (`record.size`) nor that turned upright raises
    SizeMismatch.

    `reduction(width, height)` -> 1, 2, 4 or 8: a JPEG given as bytes (or opened, not yet
    decoded) is decoded that many times smaller, libjpeg scaling it in its own transform (PIL's
    draft mode): a 12 MP photo for a 400 px input takes 20 ms against 81, and the resize from
    500 px all but nothing against 48 ms (bench/README.md, "Data pipeline throughput").
    """
    image = record.image
    if isinstance(image, bytes):
        image = Image.open(io.BytesIO(image))
    if record.size and tuple(record.size) not in (image.size, upright_size(image)):
        raise SizeMismatch(
            f"the file is {image.width} x {image.height} pixels, its annotation says "
            f"{record.size[0]} x {record.size[1]}: its boxes would not fit it"
        )
    turn = exif_turn(image, record.size, report, record.image_id)
    width, height = image.size[::-1] if turn in SWAPS_SIDES else image.size
    scale = reduction(width, height) if reduction else 1
    if scale > 1:  # (a no-op for other formats and for pixels already decoded)
        image.draft(None, (image.width // scale, image.height // scale))
    image = ImageOps.exif_transpose(image) if turn else image
    image.load()
    return to_rgb(image), (width, height)


def scaled_boxes(record: Record, width: int, height: int, scale_xy: np.ndarray, report=None):
    """The record's boxes clipped to its `width` x `height` image and scaled by `scale_xy` ->
    (boxes (N, 4) float32, labels (N,), keep: those with an area left); clipped and dropped
    boxes are reported."""
    boxes = np.asarray(record.boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(record.labels, dtype=np.int64).reshape(-1)
    limits = np.array([width, height, width, height], dtype=np.float32)
    clipped = np.clip(boxes, 0, limits)
    if report and (clipped != boxes).any():
        outside = int((clipped != boxes).any(axis=1).sum())
        report("boxes outside the image clipped", record.image_id, f"{outside} of {len(boxes)}")
    boxes = clipped * np.tile(scale_xy, 2)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if report and not keep.all():
        report("degenerate boxes dropped", record.image_id, f"{int((~keep).sum())} of {len(keep)}")
    return boxes, labels, keep


def flipped(content: torch.Tensor, boxes: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    """The content mirrored left-right, and its boxes."""
    width = content.shape[2]
    boxes = np.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
    return content.flip(2), boxes


def make_target(record, boxes, labels, keep, visible, orig_size, scale_xy) -> dict:
    """The target dict of the batch contract: the kept objects, and (where the record has
    them) its crowd regions and annotation areas (shrunk to the `visible` share)."""
    crowd = np.zeros(len(boxes), bool) if record.iscrowd is None else record.iscrowd
    objects, crowds = keep & ~crowd, keep & crowd
    result = {
        "boxes": as_tensor(boxes[objects]).reshape(-1, 4),
        "labels": torch.from_numpy(labels[objects]),
        "image_id": int(record.image_id),
        "orig_size": orig_size,
        "scale_xy": torch.from_numpy(scale_xy),
    }
    if record.iscrowd is not None:
        result["crowd_boxes"] = as_tensor(boxes[crowds]).reshape(-1, 4)
        result["crowd_labels"] = torch.from_numpy(labels[crowds])
    if record.area is not None:
        area = np.asarray(record.area, dtype=np.float32) * visible  # the part that stays
        result["area"] = as_tensor(area[objects])
        result["crowd_area"] = as_tensor(area[crowds])
    return result


EXIF_ORIENTATION = 0x0112
SWAPS_SIDES = {5, 6, 7, 8}  # the EXIF orientations that turn an image by 90 or 270 degrees


def exif_turn(image: Image.Image, size=None, report=None, image_id=None) -> int | None:
    """The EXIF orientation (2-8) that turns `image` upright (a phone photo held upright), as
    Detectron2's `read_image`, Ultralytics and predict.py read images: training and inference
    see the same pixels; None where it is upright already. Also None where the annotation
    file's `size` (width, height) is the stored pixels' and not the turned ones': its boxes were
    drawn on the stored pixels (reported, counted)."""
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    if orientation not in range(2, 9):
        return None
    if size is not None and orientation in SWAPS_SIDES and tuple(size) == image.size:
        if report:
            report("EXIF orientation left out (the annotation's size is the stored one)", image_id)
        return None
    return orientation


def recorded_size(width, height) -> tuple[int, int] | None:
    """The (width, height) an annotation records for its image, as numbers or their text;
    None where it records none (left out, 0 as some tools write, not a number). `500.0` is
    read as 500."""
    try:
        size = (round(float(width)), round(float(height)))
    except (TypeError, ValueError):
        return None
    return size if min(size) > 0 else None


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of `image` once turned upright (`exif_turn`), from its header alone."""
    turned = image.getexif().get(EXIF_ORIENTATION, 1) in SWAPS_SIDES
    return image.size[::-1] if turned else image.size


def resize(image: Image.Image, height: int, width: int) -> torch.Tensor:
    """RGB image -> uint8 (3, height, width), bilinear and antialiased when it shrinks: PIL's
    BILINEAR resize within one grey level (tests/data/test_transforms.py), 4-8x faster on
    AVX2 / AVX-512 CPUs (torch's uint8 kernel; bench/README, "Data pipeline throughput")."""
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # channels last in memory
    return functional.resize(pixels, [height, width], antialias=True)


def box_areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


# PIL's modes of more than 8 bits per pixel, and the value that is white in each
HIGH_BIT_DEPTH = {"I;16": 65535, "I;16B": 65535, "I;16L": 65535, "I;16N": 65535, "I": 65535}


def array_image(image, where: str) -> Image.Image:
    """A uint8 (C, H, W) tensor of 1 or 3 channels, or a uint8 (H, W) or (H, W, 3 or 4) array,
    RGB(A) -> a PIL image. Anything else (float pixels, channels first in an array or last in
    a tensor) is refused, naming `where`: its values or channels would be taken for others."""
    tensor = isinstance(image, torch.Tensor) and image.dtype == torch.uint8 and image.ndim == 3
    if tensor and image.shape[0] in (1, 3):
        return Image.fromarray(image.permute(1, 2, 0).squeeze(2).cpu().numpy())
    array = isinstance(image, np.ndarray) and image.dtype == np.uint8
    if array and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        return Image.fromarray(image)
    shape = f" {image.dtype} {tuple(image.shape)}" if hasattr(image, "shape") else ""
    raise TypeError(
        f"{where}: its image is a {type(image).__name__}{shape}; give a PIL image, a uint8 "
        "(C, H, W) tensor of 1 or 3 channels, or a uint8 (H, W, 3) RGB array (OpenCV's images "
        "are BGR: image[..., ::-1])"
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB. A 16-bit greyscale image (PIL's I;16, or I as 16-bit PNGs open) is scaled to
    8 bits; PIL's own convert would clip it at 255, all but black turning white. A 32-bit
    float image (F) is taken as 0..1."""
    if image.mode in HIGH_BIT_DEPTH or image.mode == "F":
        white = 1.0 if image.mode == "F" else HIGH_BIT_DEPTH[image.mode]
        values = np.asarray(image, dtype=np.float64) * (255.0 / white)
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    return image.convert("RGB")


def relabel(target: dict, label_map: torch.Tensor | None) -> dict:
    """The target with its labels renumbered: label i becomes `label_map[i]` (int64 (C + 1,));
    None: as it is."""
    if label_map is None:
        return target
    return {**target, "labels": label_map[target["labels"]]}


def collate(batch, label_map: torch.Tensor | None = None):
    """List of (image, target) -> {"images": uint8 (B, 3, S, S), "targets": list of B dicts
    (`Targets`: the batch travels as a handful of tensors),
    "image_sizes": int64 (B, 2) height and width of each image's content (the rest is padding)}.

    Samples that are None (unreadable, in validation) are left out; a batch of nothing but
    those is None, which the module skips. `label_map`: labels renumbered (`relabel`).
    """
    batch = [sample for sample in batch if sample is not None]  # unreadable, in validation
    if not batch:
        return None
    images, targets = zip(*batch, strict=True)
    targets = Targets(relabel(target, label_map) for target in targets)
    images = torch.stack(images)
    return {
        "images": images,
        "targets": targets,
        # scale-jittered images larger than the canvas were cropped to it
        "image_sizes": content_sizes(targets).clamp(max=images.shape[-1]),
    }
