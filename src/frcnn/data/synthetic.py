"""Synthetic shapes: coloured rectangles, ellipses and triangles on textured backgrounds.

Deterministic from (seed, index); no files. Each class is one shape in one colour, so a
detector must use both form and colour to tell the classes apart.
"""

import numpy as np
import torch
from PIL import Image, ImageDraw

from frcnn.boxes import pairwise_iou
from frcnn.checks import check_number
from frcnn.data.sources import MapSource
from frcnn.data.transforms import Record, Transform

SHAPES = ("rectangle", "ellipse", "triangle")
PALETTE = (
    (220, 50, 50), (50, 170, 60), (50, 90, 220), (235, 200, 40),
    (170, 60, 200), (40, 200, 210), (240, 130, 30), (250, 250, 250),
)  # fmt: skip
COLOUR_NAMES = ("red", "green", "blue", "yellow", "purple", "cyan", "orange", "white")


def class_style(label: int) -> tuple[str, tuple[int, int, int]]:
    """Label 1..num_classes -> (shape, colour); consecutive labels differ in shape and colour."""
    i = label - 1
    return SHAPES[i % len(SHAPES)], PALETTE[i % len(PALETTE)]


def class_names(num_classes: int) -> list[str]:
    """Readable names of labels 1..num_classes, e.g. "red rectangle"."""
    names = []
    for label in range(1, num_classes + 1):
        shape, colour = class_style(label)
        names.append(f"{COLOUR_NAMES[PALETTE.index(colour)]} {shape}")
    return names


def draw_sample(
    seed: int,
    index: int,
    num_classes: int,
    min_side: int = 240,
    max_side: int = 400,
    max_objects: int = 6,
    max_overlap: float = 0.3,
) -> Record:
    """One image of random size with 1..max_objects shapes whose boxes are exact.

    Objects overlap each other by at most `max_overlap` IoU, so every one stays visible.
    """
    rng = np.random.default_rng([seed, index])
    width, height = rng.integers(min_side, max_side + 1, size=2)
    # low-frequency texture plus pixel noise, in muted colours that no class uses
    coarse = rng.integers(60, 150, size=(height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    background = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
    noise = rng.integers(-12, 13, size=(height, width, 3))
    pixels = np.clip(np.asarray(background, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)

    boxes, labels = [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        side = rng.uniform(0.08, 0.45) * min(width, height)
        aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
        w, h = max(6, int(side * np.sqrt(aspect))), max(6, int(side / np.sqrt(aspect)))
        x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        box = np.array([x0, y0, x0 + w, y0 + h], dtype=np.float32)
        placed = torch.from_numpy(np.stack(boxes)) if boxes else torch.zeros(0, 4)
        if pairwise_iou(torch.from_numpy(box[None]), placed).gt(max_overlap).any():
            continue
        label = int(rng.integers(1, num_classes + 1))
        shape, colour = class_style(label)
        # PIL's corners are inclusive: the shape covers pixels x0..x0+w-1, i.e. the box above
        corners = [x0, y0, x0 + w - 1, y0 + h - 1]
        if shape == "rectangle":
            draw.rectangle(corners, fill=colour)
        elif shape == "ellipse":
            draw.ellipse(corners, fill=colour)
        else:
            draw.polygon(
                [(x0, y0 + h - 1), (x0 + w - 1, y0 + h - 1), (x0 + w // 2, y0)], fill=colour
            )
        boxes.append(box)
        labels.append(label)
    return Record(image, np.stack(boxes), np.array(labels, dtype=np.int64), index)


class SyntheticShapes(MapSource):
    """`num_images` synthetic samples; the same seed gives the same images."""

    def __init__(
        self,
        transform: Transform,
        num_images: int = 2000,
        num_classes: int = 6,
        seed: int = 0,
        max_objects: int = 6,
    ):
        check_number("num_classes", num_classes, 1, len(PALETTE) * len(SHAPES), integer=True)
        check_number("num_images", num_images, 1, integer=True)
        check_number("max_objects", max_objects, 1, integer=True)
        check_number("seed", seed, 0, integer=True)  # (NumPy's generators take no other)
        super().__init__(transform, num_classes, name="synthetic")
        self.num_images, self.seed, self.max_objects = num_images, seed, max_objects
        self.class_names = class_names(num_classes)
        self.category_ids = list(range(1, num_classes + 1))

    def __len__(self) -> int:
        return self.num_images

    def record(self, index: int) -> Record:
        return draw_sample(self.seed, index, self.num_classes, max_objects=self.max_objects)
