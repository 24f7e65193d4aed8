"""Lightning callbacks: last.ckpt at every validation, every N steps and on SIGTERM; detections and
inspection figures drawn on fixed validation images, for TensorBoard."""

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torchvision.utils import make_grid

from frcnn.drawing import draw_detections


class LastCheckpoint(ModelCheckpoint):
    """`<dirpath>/last.ckpt`, written over at the end of every validation (improved or not) and,
    with `every_n_train_steps`, every N training steps as well: a run can be resumed from its
    latest validation whatever N is. (Lightning's ModelCheckpoint saves on one trigger only: with
    a step trigger it skips validations that fall between multiples of N.)"""

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None):
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            every_n_train_steps=every_n_train_steps,
        )

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._every_n_train_steps < 1:  # saved at every validation by Lightning already
            return super().on_validation_end(trainer, pl_module)
        if trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        # also after a step-triggered save of this step: the callbacks' states (best score)
        # have changed since
        self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """SIGTERM (what SLURM and Kubernetes send before they preempt a job): Lightning stops
        after the current step, and last.ckpt is written at that step. (Not under DDP, where
        the other processes are already being stopped, and not on other errors: a diverged
        model must not replace the last good checkpoint.)"""
        stopping = isinstance(exception, SIGTERMException) and trainer.world_size == 1
        if stopping and not trainer.fast_dev_run and trainer.state.fn == TrainerFn.FITTING:
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))


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
    frcnn.figures.WHAT) for the first validation image to TensorBoard."""

    def __init__(self, what=("objectness", "proposals", "assignments"), every_n_epochs: int = 1):
        self.what = tuple(what)
        self.every_n_epochs = every_n_epochs

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ):
        if batch is None or batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        from frcnn.figures import make_figure  # matplotlib only when the callback is used

        image, size, target = batch["images"][0], batch["image_sizes"][0], batch["targets"][0]
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for what in self.what:
                    figure = make_figure(
                        what, pl_module.model, image, size, target, pl_module.class_names
                    )
                    logger.experiment.add_figure(f"inspect/{what}", figure, trainer.global_step)
