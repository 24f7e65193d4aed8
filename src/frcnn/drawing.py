"""Boxes drawn on images: ground truth, detections, one legible colour per class."""

from torchvision.utils import draw_bounding_boxes

GROUND_TRUTH = (0, 255, 0)


def class_colour(label: int) -> tuple[int, int, int]:
    """A bright colour per class that stays the same across images and runs."""
    hue = (label * 0.618034) % 1.0  # golden-ratio steps spread neighbouring labels apart
    h6 = hue * 6
    c, x = 255, int(255 * (1 - abs(h6 % 2 - 1)))
    return [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h6) % 6]


def draw_detections(image, detection, target=None, class_names=None, min_score: float = 0.3):
    """uint8 (3, H, W) image with detections (class colours, names and scores) and, if given,
    ground truth (thin green). Lines thicken with the image size."""

    def name(label: int) -> str:
        return class_names[label - 1] if class_names else str(label)

    image = image.cpu()
    width = max(2, round(max(image.shape[1:]) / 320))
    if target is not None and len(target["boxes"]):
        gt_boxes = target["boxes"].cpu()
        image = draw_bounding_boxes(
            image, gt_boxes, colors=[GROUND_TRUTH] * len(gt_boxes), width=width // 2
        )
    keep = detection["scores"] >= min_score
    boxes, scores, labels = (detection[k][keep].cpu() for k in ("boxes", "scores", "labels"))
    if len(boxes):
        texts = [f"{name(int(c))} {s:.2f}" for c, s in zip(labels, scores.tolist(), strict=True)]
        colours = [class_colour(int(c)) for c in labels]
        image = draw_bounding_boxes(image, boxes, labels=texts, colors=colours, width=width)
    return image
