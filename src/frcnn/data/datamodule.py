"""The LightningDataModule: per-split sources -> transforms -> batches."""

import functools
import inspect
import logging
import multiprocessing
import os
import re
import signal
from collections.abc import Callable
from logging.handlers import QueueHandler, QueueListener

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset
from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

from frcnn.checks import check_flag, check_number, is_list, is_names, typed_setting
from frcnn.data.coco_hub import HubDetection
from frcnn.data.held_out import split_off
from frcnn.data.repeat_factors import RepeatFactorSampler, class_table, repeat_factors
from frcnn.data.sources import SKIPPED, MapSource
from frcnn.data.torch_dataset import DatasetSource
from frcnn.data.transforms import Transform, collate, relabel
from frcnn.distributed import distributed
from frcnn.structures import counted

log = logging.getLogger(__name__)


def has_limit(make: Callable) -> bool:
    """Whether a source factory (a Hydra partial) reads a subset: a `limit` that is set."""
    return getattr(make, "keywords", {}).get("limit") is not None


class StreamEpoch(L.Callback):
    """Tells a `DetectionDataModule` each training epoch as it starts: Lightning sets the epoch
    on samplers only, and a streamed source reshuffles itself. (A run resumed mid-epoch gets
    its epoch from the data module's checkpointed state, before the stream opens.) A run
    resumed mid-epoch says what becomes of that epoch (Lightning warns only that the loader is
    "not resumable": filtered in `app.build.quiet_libraries`)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if isinstance(trainer.datamodule, DetectionDataModule):
            trainer.datamodule.set_epoch(trainer.current_epoch)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        progress = trainer.fit_loop.epoch_loop.batch_progress  # as the checkpoint left it
        done, total = progress.current.ready, trainer.num_training_batches
        epoch = trainer.current_epoch
        if not done or done >= total or progress.is_last_batch or not trainer.is_global_zero:
            return  # a new run, or one resumed at the end of an epoch
        if total == float("inf"):  # a stream: as long as it lasts
            log.info(
                "Resumed after %d batches of epoch %d: the stream starts that epoch again, in "
                "its order (its epoch is in the checkpoint), so those batches are trained on "
                "twice", done, epoch,
            )  # fmt: skip
        else:
            log.info(
                "Resumed after %d of the %d batches of epoch %d: its last %d steps take the "
                "first batches of a new pass over the data (a loader cannot start where it "
                "stopped), so some of its images come twice in the epoch and some not at all",
                done, total, epoch, total - done,
            )  # fmt: skip


def name_in_full(err: Exception, split: str, make: Callable, data_settings: dict) -> None:
    """Names the setting that `err`'s message starts with as the config names it. A source
    names its own settings bare (`annotation_file='x.json': no such file`, as a caller in
    Python gave them); the data module knows which split `make` built and what the data config
    sets for both splits (`data.train.annotation_file=...`, `data.name=...`)."""
    message = str(err.args[0]) if len(err.args) == 1 else ""
    key = re.match(r"[a-z_]+(?=[=:])", message)
    own = {*getattr(make, "keywords", {}), *inspect.signature(make).parameters}
    if key and key[0] in own | set(data_settings):
        both = data_settings.get(key[0]) is not None
        err.args = (f"data.{'' if both else split + '.'}{message}",)


# DetectionDataModule's arguments that are not settings of a data config
NOT_SETTINGS = ("self", "train", "val", "shared", "__class__")


def check_class_names(names) -> None:
    """`data.class_names` is a list of names: a single name (`data.class_names=helmet`) was
    read letter by letter, numbers match no name in a data set's files, and none at all (`[]`)
    read as not given: a VOC folder's 20 classes."""
    if names is None or is_names(names):
        return
    if is_list(names) and not names:
        raise ValueError("data.class_names=[]: give the names, or null for the data's own")
    given = [str(n) for n in names] if is_list(names) else [str(names)]
    raise ValueError(
        f"data.class_names={names!r}: a list of names, e.g. "
        + typed_setting("data.class_names", given)
    )


def check_same_classes(train: list[str], val: list[str]) -> None:
    """The validation set numbers its classes as the training set does (two COCO json files
    can each declare their own categories): else its boxes would be scored as other classes."""
    if train == val:
        return
    pairs = enumerate(zip(train, val, strict=False))
    i = next((i for i, (a, b) in pairs if a != b), min(len(train), len(val)))
    raise ValueError(
        f"data.val: the validation set's {len(val)} classes are not the training set's "
        f"{len(train)} in the same order (label {i + 1}: "
        f"{repr(train[i]) if i < len(train) else 'none'} in training, "
        f"{repr(val[i]) if i < len(val) else 'none'} in validation): its boxes would be "
        "scored as other classes. Give both the same classes (COCO json files: the same "
        "categories, ids and names)"
    )


def check_unique_names(names: list[str]) -> None:
    """Each class has a name of its own: per-class AP is logged by name (`val/ap/<name>`: one
    would overwrite the other), and init_weights and eval match a checkpoint's classes to the
    data's by name."""
    labels = {}
    for label, name in enumerate(names, 1):
        labels.setdefault(name, []).append(label)
    twice = {name: found for name, found in labels.items() if len(found) > 1}
    if twice:
        name, found = next(iter(twice.items()))
        more = f" ({len(twice) - 1} more names so)" if len(twice) > 1 else ""
        raise ValueError(
            f"data: the classes {', '.join(map(str, found))} are all named {name!r}{more}: "
            "per-class AP, init_weights and eval tell classes apart by name. Give each class a "
            "name of its own (a COCO json's categories, data.yaml's names, data.class_names)"
        )


NO_VALIDATION_SOURCE = (
    "data.val: no validation source: name one (data.val._target_=...), or hold out a share of "
    "data.train's images to validate on (data.val_fraction=0.1)"
)


def no_validation_source(**settings):
    """data.val of a data config that names no source of its own (base.yaml's): read only where
    data.val_fraction is not set, and then refused."""
    raise ValueError(NO_VALIDATION_SOURCE)


HOLD_OUT_HINT = (
    ". A data set without a validation split: data.val_fraction=0.1 holds out a tenth of "
    "data.train's images for validation (the same ones every run)"
)

VALIDATION_IMAGES_CHECKED = 200  # validation images looked for among the training ones


LOGGED_NAMES = 12  # class names in the start-up line (COCO's 80 would fill the screen)


def log_data(sources: dict, boxes: dict) -> None:
    """What was read, before the first step: the classes, and each split's images (and boxes,
    where the source holds its labels in memory) with where they come from, so that a user
    sees that the data is theirs. `sources`: {split: source} of the splits just built;
    `boxes`: {split: (C,) boxes per class, or None} (`boxes_known`)."""
    names = list(next(iter(sources.values())).class_names)
    shown = ", ".join(names[:LOGGED_NAMES]) + (
        f", ... ({len(names) - LOGGED_NAMES} more)" if len(names) > LOGGED_NAMES else ""
    )
    lines = [f"Data: {counted(len(names), 'class', 'classes')} ({shown})"]
    for split, source in sources.items():
        if isinstance(source, IterableDataset):
            size = "streamed, of a length known only once read"
        else:
            size = counted(len(source), "image")
            counts = boxes[split]
            size += f", {counted(int(counts.sum()), 'box', 'boxes')}" if counts is not None else ""
        lines.append(f"  data.{split}: {size} ({source.skips.source})")
    log.info("\n".join(lines))


@rank_zero_only  # (a start-up line once, not once per DDP process)
def warn_validation_in_training(train, val) -> None:
    """Warn where most of the validation set's first images are training images, as with
    `val: images/train` in a data.yaml or one COCO json for both: val/map would measure how
    well the model remembers its training images (sources of image files only)."""
    if not isinstance(val, MapSource) or not isinstance(train, MapSource):
        return
    first = [val.image_file(i) for i in range(min(len(val), VALIDATION_IMAGES_CHECKED))]
    if not first or None in first:
        return
    trained = {os.path.abspath(train.image_file(i)) for i in range(len(train))}
    shared = [path for path in first if os.path.abspath(path) in trained]
    if len(shared) > len(first) / 2:
        log.warning(
            "data.val: %d of its first %d images are training images (e.g. %s): val/map will "
            "say how well the model remembers them, not how it does on images it has not "
            "seen. Give a validation split of other images, or hold some of the training "
            "images out to validate on (data.val_fraction=0.1)",
            len(shared), len(first), shared[0],
        )  # fmt: skip


def boxes_known(source) -> np.ndarray | None:
    """(C,) the boxes of each class that a source trains on, where it counts them without
    reading every file (a COCO json, VOC: `MapSource.boxes_per_class`); else None."""
    return source.boxes_per_class() if isinstance(source, MapSource) else None


def warn_classes_without_boxes(names: list[str], counts: np.ndarray | None) -> None:
    """Warn where classes of the training set have no box in it (`counts`, from `boxes_known`;
    a Roboflow COCO export's category named after the data set; a class list longer than the
    labels use): the model has them, and never learns them."""
    if counts is None or counts.all():
        return
    empty = [repr(name) for name, count in zip(names, counts, strict=True) if count == 0]
    log.warning(
        "data.train: no box to train on for %d of its %s (%s): the model has every class and "
        "never learns to detect one without boxes (a class list longer than the labels use, "
        "as a Roboflow COCO export's category named after its data set; data.num_classes "
        "counts every class)",
        len(empty), counted(len(names), "class", "classes"),
        ", ".join(empty[:10]) + (", ..." if len(empty) > 10 else ""),
    )  # fmt: skip


class DetectionDataModule(L.LightningDataModule):
    """Batches of the contract in DESIGN.md: {"images": uint8 (B, 3, S, S), "targets": [...],
    "image_sizes": (B, 2)} (see `collate`).

    `train` and `val` build a source from a Transform (Hydra partials of the sources in
    `frcnn.data.SOURCES`); the data module supplies the transform: flips and scale jitter
    (`scale_jitter`, `min_visible`: see `Transform`) for training only. Any other setting
    (`shared`: a data set's `root`, `name`, `class_names`, `box_format`, ...) is given to both
    sources where it is set (not None): said once, `data.root=DIR`. `num_classes` None: the
    sources' own count. `val_fraction`: a share of `train`'s images held out to validate on, in
    place of `val` (`held_out.split_off`), for data without a validation split.
    """

    def __init__(
        self,
        train: Callable,
        val: Callable | None,
        num_classes: int | None = None,
        batch_size: int = 8,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        prefetch_factor: int = 2,
        image_size: int = 400,
        resize: str = "letterbox",
        flip_prob: float = 0.5,
        scale_jitter: list[float] | None = None,
        min_visible: float = 0.5,
        val_fraction: float | None = None,
        **shared,
    ):
        # the settings as given, for `settings` (Lightning's save_hyperparameters would also
        # log them at the start of every run)
        given = {k: v for k, v in locals().items() if k not in NOT_SETTINGS} | shared
        super().__init__()
        SKIPPED.clear()  # a new run's tally of skipped images
        self.given = given
        check_number("data.batch_size", batch_size, 1, integer=True)
        check_number("data.num_workers", num_workers, 0, integer=True)
        check_number("data.prefetch_factor", prefetch_factor, 1, integer=True)
        check_flag("data.pin_memory", pin_memory)
        check_flag("data.persistent_workers", persistent_workers)
        check_class_names(shared.get("class_names"))
        if val_fraction is not None:
            check_number("data.val_fraction", val_fraction, 0, 1, open_low=True)
        elif val is None:
            raise ValueError(NO_VALIDATION_SOURCE)
        self.val_fraction = val_fraction
        self.train_transform = Transform(image_size, resize, flip_prob, scale_jitter, min_visible)
        self.val_transform = Transform(image_size, resize, 0.0)
        # a setting of the training split that the data module, not the source, applies
        if "repeat_factor_threshold" in (getattr(train, "keywords", None) or {}):
            train = functools.partial(train.func, *train.args, **train.keywords)  # a copy
            self.repeat_factor_threshold = train.keywords.pop("repeat_factor_threshold")
        else:
            self.repeat_factor_threshold = None
        if self.repeat_factor_threshold is not None:
            check_number("data.train.repeat_factor_threshold", self.repeat_factor_threshold, 0)
        self.repeat_factors = self.sampling = None
        self.make_train, self.make_val = train, val
        self.shared = {key: value for key, value in shared.items() if value is not None}
        self.expected_num_classes = num_classes
        self.batch_size, self.num_workers = batch_size, num_workers
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self.persistent_workers = persistent_workers and num_workers > 0
        self.train_set = self.val_set = None
        self.streamed = None  # the training stream's batches, whose workers teardown stops
        self.epoch = 0
        self.numbering = self.label_map = None  # see number_as

    @classmethod
    def from_datasets(
        cls,
        train: Dataset,
        val: Dataset | None,
        class_names: list[str],
        repeat_factor_threshold: float | None = None,
        **settings,
    ) -> "DetectionDataModule":
        """A data module of two torch Datasets in torchvision's detection convention
        (`DatasetSource`: `(image, {"boxes": xyxy pixels, "labels": 1..C})`), whose labels
        1..C are `class_names`; `val` None: `val_fraction` of `train` validates; `settings`:
        the data module's own (batch_size, image_size, val_fraction, ...);
        `repeat_factor_threshold`: as data.train's. Train on it as train.py trains:
        `frcnn.fit(datamodule, *overrides)`."""
        own = [p for p in inspect.signature(cls).parameters if p not in NOT_SETTINGS]
        unknown = sorted(set(settings) - set(own))
        if unknown:
            raise TypeError(f"from_datasets: no setting {unknown} (the data module's: {own})")
        if val is not None and settings.get("val_fraction") is not None:
            raise TypeError(
                "from_datasets: a validation Dataset and val_fraction (a share of train held "
                "out to validate on): give one of the two"
            )
        repeat = {"repeat_factor_threshold": repeat_factor_threshold}
        make_val = functools.partial(DatasetSource, dataset=val, class_names=class_names)
        return cls(
            functools.partial(DatasetSource, dataset=train, class_names=class_names, **repeat),
            None if val is None else make_val,
            **settings,
        )

    @property
    def settings(self) -> dict:
        """The data module's settings, as a data config has them: all but its sources (and
        those of the sources that it applies: train.repeat_factor_threshold)."""
        repeat = {"train.repeat_factor_threshold": self.repeat_factor_threshold}
        return self.given | repeat

    def setup(self, stage: str | None = None) -> None:
        """Build the sources the stage needs: both for "fit" (or None), validation only else."""
        fit = self.train_set is None and stage in (None, "fit")
        if self.val_fraction is not None:
            built = self._hold_out(fit)
        else:
            built = {}
            if fit:
                built["train"] = self._source("train", self.make_train, self.train_transform)
            if self.val_set is None:
                built["val"] = self._validation_source(built.get("train"))
        self.train_set = built.get("train", self.train_set)
        self.val_set = built.get("val", self.val_set)
        if "train" in built:
            self.set_epoch(self.epoch)  # a restored epoch may come before the source
        if built and rank_zero_only.rank == 0:  # once, not once per DDP process
            boxes = {split: boxes_known(source) for split, source in built.items()}
            log_data(built, boxes)  # what was read, then what the training labels say of it
            if "train" in built:
                warn_classes_without_boxes(list(self.train_set.class_names), boxes["train"])
        if "train" in built and self.repeat_factor_threshold is not None:
            self._repeat_rare_classes()
        check_unique_names(list(self.val_set.class_names))
        if self.train_set is not None:
            check_same_classes(list(self.train_set.class_names), list(self.val_set.class_names))
            warn_validation_in_training(self.train_set, self.val_set)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:  # streamed sources: each distributed rank reads its own part
            for ds in (self.train_set, self.val_set):
                if hasattr(ds, "set_rank"):
                    ds.set_rank(trainer.global_rank, trainer.world_size)

    def _validation_source(self, train):
        """data.val's source; where its split is not found (a data.yaml without `val`, no
        validation json) and `train` can be counted, the error says how to hold some out."""
        try:
            return self._source("val", self.make_val, self.val_transform)
        except FileNotFoundError as err:
            if isinstance(train, MapSource) and len(err.args) == 1:
                err.args = (f"{err.args[0]}{HOLD_OUT_HINT}",)
            raise

    def _hold_out(self, fit: bool) -> dict:
        """{split: part} of data.train's parts that train and validate (`split_off`), for the
        training part where `fit` and for the validation part where it is not built yet; data.val
        is not read."""
        if not fit and self.val_set is not None:
            return {}
        train, val = self._held_out_parts(self.train_transform)
        val.substitute = False  # (as _source sets it for data.val)
        return ({"train": train} if fit else {}) | ({"val": val} if self.val_set is None else {})

    def _held_out_parts(self, transform: Transform) -> tuple:
        """(training part, validation part) of data.train (`split_off`), the first read through
        `transform`. The share is drawn from all its images, those without objects too, which
        validation keeps: `keep_empty=false` leaves them out of the training part alone."""
        make = self.make_train
        keep_empty = getattr(make, "keywords", {}).get("keep_empty", True)
        if not keep_empty:
            make = functools.partial(make, keep_empty=True)
        source = self._source("train", make, transform)
        return split_off(source, self.val_fraction, transform, self.val_transform, keep_empty)

    def _repeat_rare_classes(self) -> None:
        """Repeat factors of the training images (`repeat_factors`; every image's labels read
        once, without its pixels where the source knows them), and the per-class table of
        `sampling`, logged."""
        threshold, source = self.repeat_factor_threshold, self.train_set
        if isinstance(source, IterableDataset):
            raise ValueError(
                f"data.train.repeat_factor_threshold={threshold}: repeating images needs a data "
                "set whose images can be counted (a COCO json, YOLO or VOC folder, a torch "
                "Dataset); a streamed one cannot: leave it null"
            )
        labels = [source.labels(i) for i in range(len(source))]
        self.repeat_factors = repeat_factors(labels, source.num_classes, threshold)
        self.sampling = class_table(labels, self.repeat_factors, list(source.class_names))
        if rank_zero_only.rank != 0:  # the table once, not once per DDP process
            return
        log.info(
            "Repeat-factor sampling (data.train.repeat_factor_threshold=%s): an epoch of %s in "
            "place of %d. Per class: images with it, their share of an epoch before -> after\n%s",
            threshold, counted(round(self.repeat_factors.sum()), "image"), len(labels),
            sampling_lines(self.sampling),
        )  # fmt: skip

    def _source(self, split: str, make: Callable, transform: Transform):
        try:
            source = make(transform=transform, **self.shared)
        except (ValueError, OSError) as err:
            name_in_full(err, split, make, self.given)
            raise
        if split == "val" and hasattr(source, "substitute"):
            source.substitute = False  # validation skips unreadable images, never repeats one
        if hasattr(source, "__len__") and len(source) == 0:
            raise ValueError(f"data.{split}: the {split} data set is empty ({source.skips.source})")
        expected = self.expected_num_classes
        if expected is not None and source.num_classes != expected:
            raise ValueError(
                f"data.num_classes={expected}, but the {split} source has "
                f"{source.num_classes} classes: set data.num_classes={source.num_classes}"
            )
        return source

    @property
    def _built(self):
        if self.train_set is None and self.val_set is None:
            raise RuntimeError("DetectionDataModule: call setup() before asking for its classes")
        return self.train_set if self.train_set is not None else self.val_set

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_names(self) -> list[str]:
        """Names of labels 1..num_classes."""
        return list(self.numbering[0] if self.numbering else self._built.class_names)

    @property
    def category_ids(self) -> list[int]:
        """The data set's own category id of labels 1..num_classes (COCO's ids for COCO)."""
        return list(self.numbering[1] if self.numbering else self._built.category_ids)

    def number_as(self, class_names: list[str], category_ids: list[int] | None = None) -> dict:
        """From now on, batches number the data's classes as `class_names` (a checkpoint's)
        numbers the classes of those names: a checkpoint validated on data of some of its
        classes, or of its classes in another order. Returns {data's label: label} for those
        that change. Raises naming the data's classes that `class_names` lacks."""
        data = list(self._built.class_names)
        label_of = {}
        for i, name in enumerate(class_names, 1):
            label_of.setdefault(name, i)
        missing = [name for name in data if name not in label_of]
        if missing:
            shown = ", ".join(map(repr, class_names[:8])) + ("..." if len(class_names) > 8 else "")
            raise ValueError(
                f"the data's classes {', '.join(map(repr, missing[:6]))}"
                f"{', ...' if len(missing) > 6 else ''} are not among the checkpoint's "
                f"{len(class_names)} classes ({shown}): their boxes would be scored as other "
                "classes. Use data of the checkpoint's classes (by name, in any order, or some "
                "of them)"
            )
        labels = [label_of[name] for name in data]
        self.numbering = (list(class_names), list(category_ids or range(1, len(class_names) + 1)))
        if labels == list(range(1, len(data) + 1)):
            return {}
        self.label_map = torch.tensor([0, *labels])
        return {i: label for i, label in enumerate(labels, 1) if i != label}

    def relabel(self, target: dict) -> dict:
        """A target of the data's sources numbered as the batches number it (`number_as`)."""
        return relabel(target, self.label_map)

    def set_epoch(self, epoch: int) -> None:
        """Called at the start of every training epoch: streamed sources reshuffle."""
        self.epoch = epoch
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)

    def use_full_validation(self) -> bool:
        """Validate on the whole split from now on, where the validation source reads a subset
        (a `limit`); returns whether it did."""
        if not has_limit(self.make_val):
            return False
        self.make_val = functools.partial(self.make_val, limit=None)
        self.val_set = None
        self.setup("validate")
        return True

    def state_dict(self) -> dict:
        """Saved in checkpoints: the training epoch the stream is in."""
        return {"epoch": self.epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        """On resume, before the training stream starts (Lightning opens it before any epoch
        hook runs): a run resumed mid-epoch continues that epoch's order, not epoch 0's."""
        self.set_epoch(state_dict.get("epoch", 0))

    def train_dataloader(self):
        """Full batches only (`drop_last`): the short last one would be a new input shape and
        a step of a few images at the full learning rate."""
        if isinstance(self.train_set, IterableDataset):
            self.streamed = StreamedBatches(
                self._loader(self.train_set, shuffle=False, drop_last=True)
            )
            return self.streamed
        # Lightning gives it a DistributedSampler: as many batches on every process
        ranks = dist.get_world_size() if distributed() else 1
        if -(-len(self.train_set) // ranks) < self.batch_size:
            raise ValueError(
                f"data.batch_size={self.batch_size}, but the training set has "
                f"{len(self.train_set)} images{f' over {ranks} processes' if ranks > 1 else ''}: "
                "not one full batch. Use a smaller data.batch_size or more data."
            )
        if self.repeat_factors is not None:
            rank = dist.get_rank() if distributed() else 0
            # the run's seed (seed_everything), the same on every process
            sampler = RepeatFactorSampler(
                self.train_set, self.repeat_factors, torch.initial_seed(), ranks, rank
            )
            return self._loader(self.train_set, shuffle=False, sampler=sampler, drop_last=True)
        return self._loader(self.train_set, shuffle=True, drop_last=True)

    def teardown(self, stage: str) -> None:
        """At the end of fit, the training stream's DataLoader workers stop, as Lightning stops
        those of the loaders it is given (it cannot see the loader inside `StreamedBatches`).
        Left running, persistent workers would outlive a run started from Python
        (`frcnn.fit`), until garbage collection stopped them, 5 s apiece."""
        if stage == "fit" and self.streamed is not None:
            self.streamed.close()
            self.streamed = None

    def calibration_dataloader(self) -> DataLoader:
        """The training images in the source's order, loaded as validation loads them (no
        flips, no scale jitter): what calibrates an int8 export, the same images at every
        export of the same data (with `val_fraction`, those left to train on: the mAP that
        int8 costs is measured on the others)."""
        if self.val_fraction is None:
            source = self._source("train", self.make_train, self.val_transform)
        else:
            source = self._held_out_parts(self.val_transform)[0]
        return self._loader(source, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        if distributed() and not isinstance(self.val_set, IterableDataset):
            return self._loader(self.val_set, shuffle=False, sampler=EveryNth(self.val_set))
        return self._loader(self.val_set, shuffle=False)

    def _loader(self, dataset, shuffle: bool, sampler=None, drop_last=False) -> DataLoader:
        workers = self.num_workers
        readers = dataset.readers() if isinstance(dataset, HubDetection) else None
        if readers is not None and workers > readers:  # the others would wait, idle
            log_fewer_workers(workers, readers, dataset.split)
            workers = readers
        cores = usable_cores()
        if workers > cores:
            warn_workers_past_cores(workers, cores)
        extra = {}
        if workers > 0:
            extra = {
                "prefetch_factor": self.prefetch_factor,
                "persistent_workers": self.persistent_workers,
                "worker_init_fn": functools.partial(
                    worker_init,
                    logs=worker_logs(os.getpid(), multiprocessing.get_start_method()),
                    level=logging.getLogger().getEffectiveLevel(),
                ),
            }
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            collate_fn=functools.partial(collate, label_map=self.label_map),
            drop_last=drop_last,
            sampler=sampler,
            **extra,
        )


LOGGED_CLASSES = 20


def sampling_lines(sampling: list) -> str:
    """`class_table`'s rows as log lines: every class where there are at most
    `LOGGED_CLASSES`, else those most repeated (the fewest images) and a line for the rest,
    whose rows the run's report holds (sampling.csv): LVIS's 1203 lines would bury the log."""
    rows = sampling
    if len(sampling) > LOGGED_CLASSES:
        rows = sorted(sampling, key=lambda row: row[3] / max(row[2], 1e-12), reverse=True)
        rows = rows[:LOGGED_CLASSES]
    lines = [
        f"  {name:<24} {images:>7} {before:>8.1%} -> {after:.1%}"
        for name, images, before, after in rows
    ]
    if len(rows) < len(sampling):
        lines.append(
            f"  ... the {LOGGED_CLASSES} most repeated of {len(sampling)} classes; the run's "
            "report/sampling.csv has every class"
        )
    return "\n".join(lines)


@rank_zero_only
def log_fewer_workers(workers: int, readers: int, split: str) -> None:
    log.info(
        "data.num_workers=%d, but the %s stream has %d shard(s) per process, which as many "
        "DataLoader workers read (datasets gives each worker whole shards): %d worker(s)",
        workers, split, readers, readers,
    )  # fmt: skip


def usable_cores() -> int:
    """The CPU cores this process may run on (a container's or `taskset`'s share), as torch's
    DataLoader counts them."""
    if hasattr(os, "sched_getaffinity"):  # (Linux)
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.cache  # once per command (its loaders, its sweep's runs)
@rank_zero_only
def warn_workers_past_cores(workers: int, cores: int) -> None:
    """What torch's DataLoader warns at each loader, twice (`This DataLoader will create 4
    worker processes in total...`, silenced by `app.build.quiet_libraries`), once and with
    what a change would cost: on a 2-core machine (Colab's) at the default of 4 workers."""
    log.warning(
        "data.num_workers=%d is more than the %d CPU cores this process may use: the "
        "DataLoader workers share them, which costs little (on 2 cores the demo trains as "
        "fast with 4 as with 2). data.num_workers=%d would give training other random flips "
        "(each worker draws its images'), and so other figures than the same command gives "
        "elsewhere",
        workers, cores, cores,
    )  # fmt: skip


def worker_init(worker_id: int, logs: multiprocessing.Queue, level: int) -> None:
    """Each DataLoader worker leaves Ctrl-C to the main process, which stops training after a
    step with a checkpoint (`Preemption`): a terminal sends SIGINT to every process of the
    command, and a worker it ended would end the run without one. It is seeded as Lightning
    seeds the workers of a loader without a `worker_init_fn` (`seed_everything(workers=True)`).
    Its log records at `level` and above go to the main process's loggers (`worker_logs`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    root = logging.getLogger()
    root.handlers = [QueueHandler(logs)]
    root.setLevel(level)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id)


@functools.cache
def worker_logs(process: int, start_method: str) -> multiprocessing.Queue:
    """The queue that the DataLoader workers of this process (`os.getpid()`, started by
    `start_method`) put their log records in, and a thread of this process hands to its
    loggers (Python's recipe for logging from several processes), whose handlers Hydra set up:
    the console's, above the progress bar, and train.log's. A worker started by spawn or
    forkserver (macOS's default; Linux's from Python 3.14) has no handler of its own: its
    warnings (an image skipped, labels dropped) were a bare stderr line, missing from
    train.log. One started by fork would write with the handlers it inherited; it sends them
    here too, so that every worker's records take one path."""
    queue = multiprocessing.get_context(start_method).Queue()
    QueueListener(queue, ToLoggers()).start()  # (a daemon thread: it ends with the process)
    return queue


class ToLoggers(logging.Handler):
    """Hands a record to this process's logger of its name (and so to that logger's handlers
    and its parents')."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(record.name).handle(record)


class StreamedBatches:
    """A streamed training set's batches, each epoch: only full ones (every DataLoader worker
    drops its last, short batch: a 1-15 image step at the full LR, and a new input shape for
    cuDNN's autotuner or a compiled graph), as many on every process, and at least one.

    Under DDP every step runs on every process together, but each process streams its own part
    of the data, and the parts hold different numbers of images (shards of different sizes,
    skipped images): before each batch the processes agree (a MIN all-reduce of "I have one"
    over a CPU gloo group: no wait on the GPU) and the epoch ends, on all of them, at the count
    they all reach. The batches beyond it on some processes are not trained on in that epoch
    (the next epoch has another order). An epoch that ends before its first batch raises: the
    run would otherwise go through its epochs without a step."""

    def __init__(self, loader: DataLoader):
        self.loader, self.batches = loader, None
        # every process builds it: a collective
        self.group = dist.new_group(backend="gloo") if distributed() else None

    def __iter__(self):
        self.batches, count = iter(self.loader), 0
        while True:
            batch = next(self.batches, None)
            have = batch is not None
            if self.group is not None:
                agreed = torch.tensor([have], dtype=torch.int32)
                dist.all_reduce(agreed, op=dist.ReduceOp.MIN, group=self.group)
                have = bool(agreed.item())
            if not have:
                break
            count += 1
            yield batch
        if count == 0:
            raise ValueError(self._no_batch())

    def close(self) -> None:
        """Stop the loader's workers now (persistent ones are kept from epoch to epoch). Not
        left to the garbage collector: it closes a worker's queue before the loader can tell
        the worker to stop, and each then waits out a 5 s time-out."""
        if isinstance(self.batches, _MultiProcessingDataLoaderIter):
            self.batches._shutdown_workers()
        self.batches = None

    def _no_batch(self) -> str:
        workers = max(1, self.loader.num_workers)
        where = " on one of the processes" if self.group is not None else ""
        return (
            f"The training stream gave no full batch of data.batch_size={self.loader.batch_size} "
            f"in this epoch{where}: each of its {workers} DataLoader worker(s) per process "
            "streams its own shards and drops its last, short batch. Use more data, a smaller "
            "data.batch_size or fewer data.num_workers."
        )


class EveryNth(DistributedSampler):
    """Validation images rank, rank + N, ... for process rank of N, without the padding of
    Lightning's DistributedSampler (which repeats images so that every process has as many,
    and so counts them twice): every image once. Processes may then hold different numbers of
    images, which validation allows (DetectorModule gathers its figures)."""

    def __init__(self, dataset, **kwargs):
        super().__init__(dataset, shuffle=False, **kwargs)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))
