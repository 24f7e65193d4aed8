"""Lightning callbacks: detections drawn on fixed validation images, for TensorBoard."""

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import draw_bounding_boxes, make_grid

GROUND_TRUTH = (0, 255, 0)


def class_colour(label: int) -> tuple[int, int, int]:
    """A bright colour per class that stays the same across images and runs."""
    hue = (label * 0.618034) % 1.0  # golden-ratio steps spread neighbouring labels apart
    h6 = hue * 6
    c, x = 255, int(255 * (1 - abs(h6 % 2 - 1)))
    return [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h6) % 6]


def draw_detections(image, target, detection, class_names=None, min_score: float = 0.3):
    """uint8 (3, H, W) image with ground truth (green, thin) and detections (class colours)."""

    def name(label: int) -> str:
        return class_names[label - 1] if class_names else str(label)

    image = image.cpu()
    gt_boxes = target["boxes"].cpu()
    if len(gt_boxes):
        image = draw_bounding_boxes(image, gt_boxes, colors=[GROUND_TRUTH] * len(gt_boxes), width=1)
    keep = detection["scores"] >= min_score
    boxes, scores, labels = (detection[k][keep].cpu() for k in ("boxes", "scores", "labels"))
    if len(boxes):
        texts = [f"{name(int(c))} {s:.2f}" for c, s in zip(labels, scores.tolist(), strict=True)]
        colours = [class_colour(int(c)) for c in labels]
        image = draw_bounding_boxes(image, boxes, labels=texts, colors=colours, width=2)
    return image


class DetectionImages(L.Callback):
    """Every validation epoch, logs a grid of the first `num_images` validation images with
    ground truth (green) and detections scoring at least `min_score`."""

    def __init__(self, num_images: int = 8, min_score: float = 0.3):
        self.num_images = num_images
        self.min_score = min_score
        self._drawn: list[torch.Tensor] = []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._drawn = []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        for image, target, detection in zip(
            batch["images"], batch["targets"], outputs, strict=True
        ):
            if len(self._drawn) >= self.num_images:
                return
            names = getattr(pl_module, "class_names", None)
            self._drawn.append(draw_detections(image, target, detection, names, self.min_score))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._drawn:
            return
        grid = make_grid(self._drawn, nrow=4, padding=4)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/detections", grid, trainer.global_step)
