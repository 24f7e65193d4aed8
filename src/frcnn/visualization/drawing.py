"""Boxes drawn on images: ground truth, detections, one legible colour per class."""

import torch
from PIL import ImageDraw, ImageFont
from torch import Tensor
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes, make_grid

from frcnn.structures import class_name
from frcnn.visualization.fonts import label_font

# white: every class colour has a channel at 0 (`class_colour`), so no class is drawn so
GROUND_TRUTH = (255, 255, 255)


def class_colour(label: int) -> tuple[int, int, int]:
    """A bright colour per class that stays the same across images and runs."""
    hue = (label * 0.618034) % 1.0  # golden-ratio steps spread neighbouring labels apart
    h6 = hue * 6
    c, x = 255, int(255 * (1 - abs(h6 % 2 - 1)))
    return [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h6) % 6]


def line_width(image: Tensor) -> int:
    """Box lines thicken with the image size: 2 px up to 640 px."""
    return max(2, round(max(image.shape[1:]) / 320))


def font_size(image: Tensor) -> int:
    """Label text grows with the image as the lines do: 10 px up to 640 px, 60 on a 12 MP
    photo."""
    return 5 * line_width(image)


def draw_detections(image, detection, target=None, class_names=None, min_score: float = 0.3):
    """uint8 (3, H, W) image with detections (class colours, names and scores) and, if given,
    ground truth (thin, white)."""
    image = image.cpu()
    if target is not None:
        image = thin_white(image, target["boxes"])
    keep = detection["scores"] >= min_score
    boxes, scores, labels = (detection[k][keep].cpu() for k in ("boxes", "scores", "labels"))
    if len(boxes):
        texts = [
            f"{class_name(int(c), class_names)} {s:.2f}"
            for c, s in zip(labels, scores.tolist(), strict=True)
        ]
        image = named_boxes(image, boxes, texts, labels, label_font(class_names))
    return image


def draw_labels(image: Tensor, target: dict, class_names=None) -> Tensor:
    """uint8 (3, H, W) image with its ground-truth boxes in class colours, named, and its
    ignored regions (`crowd_boxes`: COCO's crowds, VOC's difficult objects) thin and white: a
    sample as training sees it (after the transform), to check a data set's boxes and
    classes."""
    image, boxes, labels = image.cpu(), target["boxes"].cpu(), target["labels"].cpu()
    image = thin_white(image, target.get("crowd_boxes", boxes[:0]))
    if not len(boxes):
        return image
    texts = [class_name(int(c), class_names) for c in labels]
    return named_boxes(image, boxes, texts, labels, label_font(class_names))


def thin_white(image: Tensor, boxes: Tensor) -> Tensor:
    """Boxes (N, 4) drawn thin and white on a uint8 (3, H, W) CPU image: the ground truth
    beside detections, the ignored regions beside labels (no class colour is white)."""
    if not len(boxes):
        return image
    colours = [GROUND_TRUTH] * len(boxes)
    return draw_bounding_boxes(image, boxes.cpu(), colors=colours, width=line_width(image) // 2)


def named_boxes(image: Tensor, boxes: Tensor, texts: list[str], labels: Tensor, font: str):
    """Boxes (N, 4) in their classes' colours, each with its text on a patch of that colour
    over its top-left corner, outside the box where the image has room above it (the object
    stays in sight), else inside, and moved left where the image's right edge would cut it:
    black or white text (`text_colour`; text in the class colour alone vanished on an object or
    a background of that colour), in the font file `font` (PIL's default font is 10 px at any
    size, 3 px when a 12 MP photo is shown on a screen). Lines and text grow with the image.
    The names are drawn after all the boxes: no line crosses one."""
    colours = [class_colour(int(c)) for c in labels]
    width = line_width(image)
    corners = boxes.to(torch.int64).tolist()  # whole pixels, as draw_bounding_boxes draws
    picture = to_pil_image(image)
    draw = ImageDraw.Draw(picture)
    for box, colour in zip(corners, colours, strict=True):
        draw.rectangle(box, outline=colour, width=width)
    face = ImageFont.truetype(font, font_size(image))
    for (x0, y0, *_), text, colour in zip(corners, texts, colours, strict=True):
        if not text:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), text, font=face)
        # the patch (the text's extent and a pixel) on the box's top line, else below it
        y = y0 - 1 - bottom if y0 - 2 - bottom + top >= 0 else y0 + width - top + 1
        # a name longer than the room right of the box shifts left, whole in the image
        x = max(min(x0 - left + 1, picture.width - 1 - right), 1 - left)
        draw.rectangle((x + left - 1, y + top - 1, x + right, y + bottom), fill=colour)
        draw.text((x, y), text, fill=text_colour(colour), font=face)
    return pil_to_tensor(picture)


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on a light colour (yellow, green, cyan), white on a dark one (blue, red, violet):
    by its luma (ITU-R 601 weights, 0..255)."""
    r, g, b = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def label_grid(samples, class_names=None) -> Tensor:
    """(image, target) samples -> one uint8 (3, H, W) picture of them with their labels, four
    to a row (Ultralytics' train_batch0.jpg)."""
    return make_grid([draw_labels(i, t, class_names) for i, t in samples], nrow=4, padding=4)
