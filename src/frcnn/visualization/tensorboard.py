"""TensorBoard pictures, as Lightning callbacks: detections and the look-inside figures drawn on
fixed validation images at every validation, the first training batch's labels once."""

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import make_grid

from frcnn.checks import check_number, is_list, typed_setting
from frcnn.visualization.drawing import draw_detections, label_grid


class DetectionImages(L.Callback):
    """Every validation epoch, logs a grid of the first `num_images` validation images with
    ground truth (white) and detections scoring at least `min_score`; at the start of
    training, the first training batch with its labels (`train/labels`): a wrong box format or
    class list is seen in the first minute."""

    def __init__(self, num_images: int = 8, min_score: float = 0.3):
        # a negative count drew nothing, a score above 1 no detection: both unasked
        check_number("callbacks.detection_images.num_images", num_images, 1, integer=True)
        check_number("callbacks.detection_images.min_score", min_score, 0, 1)
        self.num_images = num_images
        self.min_score = min_score
        self._drawn: list[torch.Tensor] = []
        self._labels_drawn = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._labels_drawn or not trainer.is_global_zero:
            return
        self._labels_drawn = True  # one picture a run: a single copy to the host
        count = min(self.num_images, len(batch["images"]))
        samples = zip(batch["images"][:count], batch["targets"][:count], strict=True)
        grid = label_grid(samples, getattr(pl_module, "class_names", None))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("train/labels", grid, trainer.global_step)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._drawn = []

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if batch is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        for image, target, detection in zip(
            batch["images"], batch["targets"], outputs, strict=True
        ):
            if len(self._drawn) >= self.num_images:
                return
            names = getattr(pl_module, "class_names", None)
            self._drawn.append(draw_detections(image, detection, target, names, self.min_score))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self._drawn:
            return
        grid = make_grid(self._drawn, nrow=4, padding=4)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("val/detections", grid, trainer.global_step)


class InspectionFigures(L.Callback):
    """Every `every_n_epochs` validations, logs the figures named in `what` (see
    frcnn.visualization.inspection.WHAT) for the first validation image to TensorBoard."""

    def __init__(self, what=("objectness", "proposals", "assignments"), every_n_epochs: int = 1):
        # matplotlib only when the callback is used
        from frcnn.visualization.inspection import WHAT

        # checked here, at start-up: a wrong name failed only after the first epoch trained
        key = "callbacks.inspection.what"
        if not is_list(what) or not what or any(name not in WHAT for name in what):
            raise ValueError(
                f"{typed_setting(key, what)}: give a list of one or more of {', '.join(WHAT)}, "
                f"e.g. {key}=[objectness,proposals]"
            )
        check_number("callbacks.inspection.every_n_epochs", every_n_epochs, 1, integer=True)
        self.what = tuple(what)
        self.every_n_epochs = every_n_epochs

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if batch is None or batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        from frcnn.visualization.inspection import make_figure

        image, size, target = batch["images"][0], batch["image_sizes"][0], batch["targets"][0]
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for what in self.what:
                    figure = make_figure(
                        what, pl_module.model, image, size, target, pl_module.class_names
                    )
                    logger.experiment.add_figure(f"inspect/{what}", figure, trainer.global_step)
