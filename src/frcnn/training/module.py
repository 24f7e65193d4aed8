"""The LightningModule: losses and their logging, validation mAP, optimiser and schedule."""

import logging
import time
from collections.abc import Callable

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from torch import Tensor, nn
from torchmetrics.detection import MeanAveragePrecision

from frcnn.boxes import to_original_pixels
from frcnn.checks import check_flag, check_number
from frcnn.distributed import distributed
from frcnn.evaluation.results import Evaluation, log_pr_curves
from frcnn.structures import Targets, class_name, counted
from frcnn.training.lr_schedule import check_resumed_schedule

log = logging.getLogger(__name__)

LOSS_NAMES = ("rpn_cls", "rpn_box", "roi_cls", "roi_box")
# the detector's parts that `module.compile_scope` compiles
COMPILE_SCOPES = {
    "backbone": ("backbone", "fpn"),
    "fixed_shapes": ("backbone", "fpn", "rpn.head", "roi_heads.box_head", "roi_heads.predictor"),
}


def compile_parts(model: nn.Module, backend: str, scope: str) -> None:
    """`torch.compile` the parts of `model` that COMPILE_SCOPES[scope] names, each in place."""
    for name in COMPILE_SCOPES[scope]:
        model.get_submodule(name).compile(backend=backend)


def check_compile(compile) -> None:
    """Raise ValueError unless `module.compile` is true, false or the name of a torch.compile
    backend (torch would say "Invalid backend" only at the first step, the run built)."""
    if isinstance(compile, bool) or compile in torch._dynamo.list_backends(exclude_tags=()):
        return
    raise ValueError(
        f"module.compile={compile!r}: true (inductor), false or a torch.compile backend, e.g. "
        + ", ".join(torch._dynamo.list_backends())
    )


def run_length(trainer: L.Trainer) -> int:
    """The run's optimiser steps, over which the LR schedule is laid; refuses a run whose
    length the trainer cannot know (Lightning's estimate is then -1 or infinite: a schedule
    laid over -1 steps is past its milestones at step 0, and trains at 1% of the LR without
    a word)."""
    total = trainer.estimated_stepping_batches
    if 0 < total < float("inf"):
        stream = trainer.num_training_batches == float("inf")
        if stream and trainer.max_epochs != -1 and trainer.is_global_zero:
            log.warning(
                "trainer.max_epochs=%d may end this stream's run before trainer.max_steps=%d "
                "(a pass's length is unknown until read), short of the LR schedule laid over "
                "those steps; trainer.max_epochs=-1 runs them all",
                trainer.max_epochs, total,
            )  # fmt: skip
        return int(total)
    for setting in ("max_steps", "limit_train_batches"):
        if getattr(trainer, setting) == 0:
            raise ValueError(f"trainer.{setting}=0 trains nothing (eval.py validates a model)")
    if trainer.max_steps == -1 and trainer.max_epochs != -1:  # Lightning's -1 of a stream
        raise ValueError(
            "trainer.max_steps: the training set is a stream (a hub data set, an "
            "IterableDataset), whose length is not known until it is read, so its run is "
            "counted in steps: set trainer.max_steps (the LR schedule's length) and "
            "trainer.max_epochs=-1, e.g. trainer.max_steps=3000 for 24 epochs of 1000 images "
            "at data.batch_size=8"
        )
    raise ValueError(
        f"trainer.max_steps={trainer.max_steps} and trainer.max_epochs={trainer.max_epochs}: "
        "the run has no end, and the LR schedule needs one: set trainer.max_steps"
    )


def fit_logging_interval(trainer: L.Trainer) -> None:
    """A run of fewer optimiser steps than `trainer.log_every_n_steps` (a smoke test, a small
    data set counted in epochs) would log no step at all (no loss curves, no learning rate):
    it logs ten times instead, and says so."""
    steps, interval = trainer.estimated_stepping_batches, trainer.log_every_n_steps
    if 0 < steps < interval and not trainer.fast_dev_run:
        trainer.log_every_n_steps = max(1, int(steps) // 10)
        if trainer.is_global_zero:
            every = trainer.log_every_n_steps
            log.warning(
                "trainer.log_every_n_steps=%d is more than the run's %s: logging every %s "
                "instead",
                interval, counted(int(steps), "step"), f"{every} steps" if every > 1 else "step",
            )  # fmt: skip


MAP_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")


def detection_limits(detections_per_img: int | None) -> list[int]:
    """COCOeval's limits on the detections it counts per image: COCO's 1, 10 and 100, the last
    raised to what the detector returns (a dense scene's 300), else the mAP would leave out
    detections it made."""
    return [1, 10, max(100, detections_per_img or 100)]


def ground_truth(target: dict) -> dict[str, Tensor]:
    """One target as COCO evaluation sees it, in original pixels: the objects and, where the
    source has them, crowd regions (iscrowd: matched detections are ignored, not counted as
    false positives) and the annotations' own areas (for the small / medium / large ranges)."""
    crowd_boxes = target.get("crowd_boxes", target["boxes"][:0])
    boxes = torch.cat([target["boxes"], crowd_boxes])
    truth = {
        "boxes": to_original_pixels(boxes, target["scale_xy"], target["orig_size"]),
        "labels": torch.cat([target["labels"], target.get("crowd_labels", target["labels"][:0])]),
        "iscrowd": torch.cat(
            [
                torch.zeros_like(target["labels"]),
                torch.ones(len(crowd_boxes), dtype=torch.long, device=boxes.device),
            ]
        ),
    }
    if "area" in target:
        truth["area"] = torch.cat([target["area"], target["crowd_area"]])
    return truth


def to_cpu(items: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    return [{k: v.cpu() for k, v in item.items()} for item in items]


class DetectorModule(L.LightningModule):
    """Trains and validates a `FasterRCNN`.

    Args:
        model: the detector (built by Hydra from `cfg.model`).
        optimizer: partial optimiser taking parameter groups (weight decay is switched off for
            biases and normalisation parameters).
        scheduler: partial taking (optimizer, total_steps) -> a per-step LR scheduler, or None.
        class_names: names of labels 1..C, for per-class AP and pictures.
        category_ids: the data set's category id of labels 1..C (for COCO-format results).
        per_class_map: also log the AP of every class (slower to compute).
        channels_last: convolutions in channels-last memory format (faster on recent GPUs).
        compile: `torch.compile` the parts of the model that `compile_scope` names, in place,
            so that checkpoints keep the keys of an uncompiled model. True uses the default
            backend (inductor); a string names another (e.g. "cudagraphs").
        compile_scope: "backbone" (backbone and FPN) or "fixed_shapes" (also the RPN head, the
            box head and the box predictor: every part whose input shapes are fixed; anchor
            matching, sampling and NMS, whose shapes are data, stay eager). See COMPILE_SCOPES.
        finite_check_every: how often (steps) the host reads whether a training loss has been
            non-finite, which stops the run; also before every validation and checkpoint.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None = None,
        class_names: list[str] | None = None,
        category_ids: list[int] | None = None,
        per_class_map: bool = False,
        channels_last: bool = False,
        compile: bool | str = False,
        compile_scope: str = "backbone",
        finite_check_every: int = 50,
    ):
        super().__init__()
        if compile_scope not in COMPILE_SCOPES:
            raise ValueError(
                f"module.compile_scope={compile_scope!r}: one of {', '.join(COMPILE_SCOPES)}"
            )
        check_number("module.finite_check_every", finite_check_every, 1, integer=True)
        check_flag("module.per_class_map", per_class_map)
        check_flag("module.channels_last", channels_last)
        check_compile(compile)
        self.finite_check_every = finite_check_every
        self._first_non_finite = None
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.class_names = list(class_names) if class_names else None
        self.category_ids = list(category_ids) if category_ids else None
        self.per_class_map = per_class_map
        self.channels_last = channels_last
        # a string names the backend; kept apart from nn.Module.compile, which it would shadow
        self.compile_backend = "inductor" if compile is True else (compile or None)
        self.compile_scope = compile_scope
        # what the detector returns per image (None: a stand-in model without ROI heads)
        self.detections_per_img = getattr(
            getattr(model, "roi_heads", None), "detections_per_img", None
        )
        limits = detection_limits(self.detections_per_img)
        # gathered across processes by the module itself (all_gather_object): torchmetrics'
        # own sync gathers per image and fails when ranks hold different numbers of images
        # extended_summary: COCOeval's precision array, for the per-class table
        self.val_map = MeanAveragePrecision(
            backend="faster_coco_eval",
            max_detection_thresholds=limits,
            class_metrics=per_class_map,
            sync_on_compute=False,
            extended_summary=True,
        )
        self.map_keys = (*MAP_KEYS, f"mar_{limits[-1]}")  # the mean recall at the last limit
        self.warned_crowded = False  # validation images with more objects than detections
        self.evaluation: Evaluation | None = None  # the last validation's, for the report
        self._val_batches: list[dict] = []  # images, losses, detections, ground truth
        self.run_config: dict | None = None  # the resolved Hydra config, saved in checkpoints
        self._last_batch_start: float | None = None
        self._compiled = False

    def metric_names(self) -> set[str]:
        """What a run logs, for callbacks to monitor: the training figures (Lightning adds
        each as `_step` and `_epoch` too), the validation losses, COCO figures and, with
        per_class_map, each class's AP; Lightning's `epoch` and `step`."""
        train = (*LOSS_NAMES, "loss", "images_per_s")
        names = {f"train/{k}{end}" for k in train for end in ("", "_step", "_epoch")}
        names |= {f"val/{k}" for k in (*LOSS_NAMES, "loss", "images", *self.map_keys)}
        if self.per_class_map:
            count = self.model.num_classes
            names |= {f"val/ap/{class_name(c, self.class_names)}" for c in range(1, count + 1)}
        return names | {"epoch", "step"}

    def setup(self, stage: str) -> None:
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.compile_backend and not self._compiled:  # setup runs per stage: compile once
            compile_parts(self.model, self.compile_backend, self.compile_scope)
            self._compiled = True

    def forward(self, images: Tensor, targets=None, image_sizes: Tensor | None = None):
        return self.model(self._prepare(images), targets, image_sizes)

    def _prepare(self, images: Tensor) -> Tensor:
        """The step's images as the model takes them, just before its call."""
        if self.compile_backend:
            # a step begins: without it, CUDA graph trees (the "cudagraphs" backend) begin one
            # at each compiled part's call where no backward is pending (validation), and the
            # FPN's call freed the backbone's outputs, its inputs
            torch.compiler.cudagraph_mark_step_begin()
        if self.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    # training

    def training_step(self, batch, batch_idx: int):
        losses = self.model(self._prepare(batch["images"]), batch["targets"], batch["image_sizes"])
        loss = sum(losses.values())
        size = len(batch["targets"])
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, on_epoch=True, batch_size=size)
        self.log("train/loss", loss, prog_bar=True, on_epoch=True, batch_size=size)
        return {"loss": loss, "losses": {k: v.detach() for k, v in losses.items()}}

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # the step's rate, for the curve; its epoch mean (on_epoch) is the run's figure
        now = time.perf_counter()
        if self._last_batch_start is not None:
            rate = len(batch["targets"]) / (now - self._last_batch_start)
            self.log("train/images_per_s", rate, prog_bar=True, on_epoch=True, batch_size=1)
        self._last_batch_start = now

    def on_validation_start(self) -> None:
        self._last_batch_start = None  # the pause for validation is not a training step
        self.check_finite()  # not a diverged model's figures

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # noted on the device (no host wait per step); read every `finite_check_every` steps,
        # before each validation and before each checkpoint: none holds a non-finite model
        losses = outputs["losses"]
        finite = torch.stack([torch.isfinite(losses[name]) for name in LOSS_NAMES])
        first = self._first_non_finite
        new = first[0] < 0
        step = torch.full_like(first[:1], self.global_step)
        self._first_non_finite = torch.where(
            new & ~finite.all(), torch.cat([step, (~finite).long()]), first
        )
        if self.global_step % self.finite_check_every == 0:
            self.check_finite()

    def check_finite(self) -> None:
        """Raise if a training loss has been non-finite since training started (one read)."""
        if self._first_non_finite is None:  # not training
            return
        first = self._first_non_finite.tolist()
        if first[0] < 0:
            return
        bad = [name for name, flag in zip(LOSS_NAMES, first[1:], strict=True) if flag]
        raise FloatingPointError(
            f"Non-finite loss at step {first[0]} (epoch {self.current_epoch}): "
            f"{', '.join(bad)}. Training stopped; the last good checkpoint is kept. Try a lower "
            "learning rate, more warm-up or precision=32."
        )

    def on_fit_start(self) -> None:
        fit_logging_interval(self.trainer)

    def on_train_start(self) -> None:
        # (step, one flag per loss) of the first non-finite loss; step -1: none yet
        self._first_non_finite = torch.full((1 + len(LOSS_NAMES),), -1, device=self.device)
        if self.scheduler_factory is not None:  # (its state restored where resumed)
            check_resumed_schedule(self.lr_schedulers(), run_length(self.trainer))

    def on_train_end(self) -> None:
        self.check_finite()
        self._first_non_finite = None

    # validation

    def validation_step(self, batch, batch_idx: int):
        if batch is None:  # every image of the batch was unreadable (counted and logged)
            return None
        targets = batch["targets"]
        losses, detections = self.model.forward_with_losses(
            self._prepare(batch["images"]), targets, batch["image_sizes"]
        )
        preds = [
            {**d, "boxes": to_original_pixels(d["boxes"], t["scale_xy"], t["orig_size"])}
            for d, t in zip(detections, targets, strict=True)
        ]
        # on the host in one copy per key, not per image and key
        host = targets.to("cpu") if isinstance(targets, Targets) else targets
        self._val_batches.append(
            {
                "images": len(targets),
                "losses": {k: v.detach().cpu() for k, v in losses.items()},
                "preds": to_cpu(preds),
                "truths": to_cpu([ground_truth(t) for t in host]),
                # clones: a view would carry the batch's whole padded tensor when gathered
                "input_boxes": [t["boxes"].cpu().clone() for t in host],
                "input_labels": [t["labels"].cpu().clone() for t in host],
                "image_size": batch["images"].shape[-1],
            }
        )
        return detections

    def on_validation_epoch_end(self) -> None:
        """The figures of all images of all processes: gathered once (every process then
        evaluates them all), so that processes may hold different numbers of images, none."""
        batches = self.gathered_batches()
        images = sum(b["images"] for b in batches)
        if not images:  # (on every process: they all hold the gathered batches)
            raise ValueError(
                "no validation image could be read (each was skipped: see the warnings above): "
                "is the validation data there and intact (data.val)?"
            )
        self.log("val/images", float(images))
        for name in LOSS_NAMES:  # the mean loss per image
            self.log(f"val/{name}", sum(b["losses"][name] * b["images"] for b in batches) / images)
        loss = sum(sum(b["losses"].values()) * b["images"] for b in batches) / images
        self.log("val/loss", loss)
        result = self.evaluate(batches)
        self.say_validation(images, float(loss), result)
        for logger in self.loggers:  # (none without a trainer)
            # no curves of the sanity check, nor of a validation without a label
            curves = self.evaluation.classes and not self.trainer.sanity_checking
            if isinstance(logger, TensorBoardLogger) and curves:
                log_pr_curves(logger.experiment, self.evaluation, self.global_step)
        for key in self.map_keys:
            self.log(f"val/{key}", result[key].float(), prog_bar=key == "map_50")
        if self.per_class_map and result["classes"].numel() > 0:
            for label, ap in zip(
                result["classes"].tolist(), result["map_per_class"].tolist(), strict=True
            ):
                self.log(f"val/ap/{class_name(label, self.class_names)}", ap)

    def say_validation(self, images: int, loss: float, result: dict) -> None:
        """A line per validation of a training run, in the console and train.log: the log
        keeps the run's history (TensorBoard has the curves; the progress bar shows the last
        mAP@0.5 only)."""
        trainer = self._trainer
        fitting = trainer is not None and trainer.state.fn == TrainerFn.FITTING
        if fitting and not trainer.sanity_checking and trainer.is_global_zero:
            log.info(
                "Validation at step %d (epoch %d, %d images): val/map %.4f, val/map_50 %.4f, "
                "val/loss %.4f",
                self.global_step, self.current_epoch, images, result["map"], result["map_50"],
                loss,
            )  # fmt: skip

    def gathered_batches(self) -> list[dict]:
        """This validation's batches (host copies), of every process under DDP."""
        batches, self._val_batches = self._val_batches, []
        if distributed():
            everyone = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, batches)
            batches = [batch for rank in everyone for batch in rank]
        return batches

    def evaluate(self, batches: list[dict]) -> dict:
        """COCO's metrics of the batches' detections (torchmetrics' result), and
        `self.evaluation`: what the report and the summary read (precision array, classes)."""
        labels = set()
        for batch in batches:
            self.val_map.update(batch["preds"], batch["truths"])
            for pred, truth in zip(batch["preds"], batch["truths"], strict=True):
                labels.update(pred["labels"].tolist(), truth["labels"].tolist())
        result = self.val_map.compute()
        self.val_map.reset()
        self.warn_if_crowded([t for b in batches for t in b["truths"]])
        self.evaluation = Evaluation(
            preds=[p for b in batches for p in b["preds"]],
            truths=[t for b in batches for t in b["truths"]],
            input_boxes=[x for b in batches for x in b["input_boxes"]],
            input_labels=[x for b in batches for x in b["input_labels"]],
            # COCOeval's classes: every label of the detections and ground truth, sorted
            precision=result["precision"],
            classes=sorted(labels),
            image_size=max((b["image_size"] for b in batches), default=0),
            class_names=self.class_names,
            metrics={f"val/{k}": float(result[k]) for k in self.map_keys},
        )
        return result

    def warn_if_crowded(self, truths: list[dict]) -> None:
        """Warn once where a validation image holds more objects than the detector returns
        detections: its recall, and the mAP, stop short of what the detector finds."""
        returned = self.detections_per_img
        if self.warned_crowded or returned is None:
            return
        most = max((int((t["iscrowd"] == 0).sum()) for t in truths), default=0)
        if most <= returned:
            return
        self.warned_crowded = True
        if rank_zero_only.rank == 0:  # every process holds the gathered images
            proposals = self.model.rpn.post_nms_top_n[False]
            log.warning(
                "A validation image holds %d objects, more than the %d detections the detector "
                "returns per image (model.roi_heads.detections_per_img): recall and mAP stop "
                "short of what it finds. For dense scenes raise it (e.g. to 300; the mAP then "
                "counts as many), and model.rpn.post_nms_top_n_test (%d), the proposals it "
                "chooses from",
                most, returned, proposals,
            )  # fmt: skip

    # optimisation

    def configure_optimizers(self):
        decay, no_decay = [], []
        for param in self.model.parameters():
            if param.requires_grad:
                # biases and normalisation weights are vectors: no weight decay for them
                (no_decay if param.ndim <= 1 else decay).append(param)
        try:
            optimizer = self.optimizer_factory(
                [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
            )
        except ValueError as err:  # torch's own checks ("Invalid momentum value: -0.9")
            raise ValueError(f"module.optimizer: {err}") from None
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=run_length(self.trainer))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.check_finite()  # never a non-finite model on disk
        # what a Predictor needs to rebuild the model and name its classes without the data
        checkpoint["config"] = self.run_config
        checkpoint["class_names"] = self.class_names
        checkpoint["category_ids"] = self.category_ids
