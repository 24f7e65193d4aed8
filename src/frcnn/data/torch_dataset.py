"""A torch Dataset in torchvision's detection convention, as a source (the Python door)."""

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.ops import box_convert

from frcnn.checks import is_list, is_names
from frcnn.data.sources import MapSource
from frcnn.data.transforms import Record, Transform, array_image, id_number

# PIL modes whose pixel array is the image (fromarray gives the same mode back)
ARRAY_MODES = ("1", "L", "LA", "I", "I;16", "F", "RGB", "RGBA")
# the items read at start-up to check that the data set is in the convention
CHECKED_ITEMS = 50


class DatasetSource(MapSource):
    """`dataset[i]` -> (image, target) as torchvision's detection tutorial has it: the image a
    PIL image or a uint8 (C, H, W) tensor; target["boxes"] float (K, 4) xyxy in the image's
    pixels (a `tv_tensors.BoundingBoxes` in another format is converted), target["labels"]
    int64 (K,) in 1..len(class_names); optional "image_id" (an integer or a string; else i),
    "iscrowd", "area".

    The image's pixels are taken as they are (its boxes were drawn on them), with no EXIF
    turn. The first items are checked at start-up: a data set whose boxes mostly lie outside
    their images or are inverted (xywh, normalised) stops the run, with an example."""

    def __init__(self, transform: Transform, dataset, class_names: list[str]):
        if isinstance(dataset, str):  # a saved config names the data set it cannot hold
            raise ValueError(
                f"data: the run trained on a torch Dataset given in Python ({dataset}); a "
                "config cannot rebuild it: give the data (data=... or "
                "DetectionDataModule.from_datasets)"
            )
        if not is_names(class_names):  # ("person" was read letter by letter)
            given = [str(n) for n in class_names] if is_list(class_names) else [str(class_names)]
            raise ValueError(
                f"from_datasets: class_names={class_names!r}: the names of labels 1..C, a list "
                "of strings" + (f", e.g. {given!r}" if given else "")
            )
        self.dataset = dataset
        self.class_names = list(class_names)
        self.category_ids = list(range(1, len(self.class_names) + 1))
        super().__init__(transform, len(self.class_names), name=type(dataset).__name__)
        check_items(self, min(len(self), CHECKED_ITEMS))

    def __len__(self) -> int:
        return len(self.dataset)

    def describe(self, index: int) -> str:
        return f"item {index} of {self.skips.source}"

    def record(self, index: int) -> Record:
        item = self.dataset[index]
        if not (isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[1], dict)):
            raise TypeError(
                f"{self.describe(index)} is a {type(item).__name__}, not (image, target) with "
                "target a dict of 'boxes' and 'labels' (torchvision's detection convention)"
            )
        image, target = item
        missing = {"boxes", "labels"} - set(target)
        if missing:
            raise TypeError(f"{self.describe(index)}: its target has no {sorted(missing)}")
        boxes = xyxy(target["boxes"], self.describe(index))
        optional = {
            key: np.asarray(target[key], dtype=dtype).reshape(-1)
            for key, dtype in (("iscrowd", bool), ("area", np.float32))
            if key in target
        }
        image_id = target.get("image_id", index)
        image_id = image_id.item() if isinstance(image_id, torch.Tensor) else image_id
        return Record(
            pil_image(image, self.describe(index)),
            boxes,
            class_numbers(target["labels"], self.describe(index)),
            id_number(image_id) if isinstance(image_id, str) else int(image_id),
            **optional,
        )


def class_numbers(labels, where: str) -> np.ndarray:
    """target["labels"] -> int64 (K,). Labels that are no whole numbers (class names, 1.5) are
    refused, naming `where`: a Dataset's labels are code, which a cast would hide."""
    array = np.asarray(labels)
    whole = array.dtype.kind in "iu" or (array.dtype.kind == "f" and (array == array.round()).all())
    if not whole:
        raise TypeError(
            f"{where}: its labels are {array.reshape(-1)[:5].tolist()}, not class numbers: "
            "target['labels'] holds each object's class as 1..C, its position in class_names "
            "counted from 1 (class_names.index(name) + 1)"
        )
    return array.astype(np.int64).reshape(-1)


def xyxy(boxes, where: str) -> np.ndarray:
    """(K, 4) boxes -> float32 xyxy; a `tv_tensors.BoundingBoxes` says its own format. Boxes
    of another shape (rotated boxes, polygons) are refused, naming `where`."""
    if isinstance(boxes, tv_tensors.BoundingBoxes):
        form = boxes.format.name
        if form not in ("XYXY", "XYWH", "CXCYWH"):  # rotated: XYWHR, CXCYWHR, XYXYXYXY
            raise TypeError(
                f"{where}: its boxes are rotated ({form}); the detector takes axis-aligned "
                "boxes: give each one's enclosing box"
            )
        boxes = box_convert(boxes.as_subclass(torch.Tensor), form.lower(), "xyxy")
    array = np.asarray(boxes, dtype=np.float32)
    if array.ndim > 2 or (array.ndim == 2 and array.shape[1] != 4) or array.size % 4:
        raise TypeError(
            f"{where}: its boxes are of shape {tuple(array.shape)}, not (K, 4): target['boxes'] "
            "holds one x0, y0, x1, y1 row per object"
        )
    return array.reshape(-1, 4)


def pil_image(image, where: str) -> Image.Image:
    """A PIL image (without its EXIF orientation: the boxes go with the pixels as they are), or
    a uint8 tensor or array (`array_image`) -> a PIL image."""
    if isinstance(image, Image.Image):
        if image.mode not in ARRAY_MODES:  # palette, CMYK, ...: their values are not colours
            image = image.convert("RGB")
        return Image.fromarray(np.asarray(image))  # a new image: no EXIF
    return array_image(image, where)


def check_items(source: DatasetSource, count: int) -> None:
    """Stop at start-up where the first `count` items hold a label outside 1..C (0-based
    labels, or a class list of other length: a Dataset's labels are code, not noisy files),
    or where most of their boxes are inverted or lie outside their image (xywh or normalised
    boxes taken for xyxy pixels)."""
    total = bad = 0
    example = ""
    for index in range(count):
        record = source.record(index)
        outside = [int(label) for label in record.labels if not 1 <= label <= source.num_classes]
        if outside:
            raise ValueError(
                f"{source.describe(index)} has labels {sorted(set(outside))[:5]} outside 1.."
                f"{source.num_classes}: target['labels'] count from 1 (0 is the background) "
                f"over class_names ({len(source.class_names)} given)"
            )
        width, height = record.image.size
        b = np.asarray(record.boxes)
        wrong = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1]) | (b < -1).any(1)
        wrong |= (b[:, 2] > width + 1) | (b[:, 3] > height + 1)
        total, bad = total + len(b), bad + int(wrong.sum())
        if wrong.any() and not example:
            example = f"{source.describe(index)} ({width} x {height}): {b[wrong][0].tolist()}"
    if total and bad > total / 2:
        raise ValueError(
            f"{source.skips.source}: {bad} of the {total} boxes of its first {count} items are "
            f"inverted or outside their image (e.g. {example}): target['boxes'] must be x0, y0, "
            "x1, y1 in the image's pixels (or a tv_tensors.BoundingBoxes that says its format)"
        )
