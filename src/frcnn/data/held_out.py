"""A validation split held out of a training source, for data sets that have none (a Kaggle
set, one COCO json exported from a labelling tool, a data.yaml without `val`)."""

import copy
from pathlib import Path

import numpy as np
from torch.utils.data import IterableDataset

from frcnn.data.sources import MapSource
from frcnn.data.transforms import Record, Transform
from frcnn.structures import counted

# the draw's seed, not the run's: every run over the same data (a sweep over seeds, eval.py on
# its checkpoint) validates on the same images
HOLD_OUT_SEED = 0


def hold_out(count: int, share: float) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices) of `count` samples, each sorted: `share` of them
    (rounded, at least one) drawn for validation with a fixed seed."""
    held = max(1, round(share * count))
    order = np.random.default_rng(HOLD_OUT_SEED).permutation(count)
    return np.sort(order[held:]), np.sort(order[:held])


class Part(MapSource):
    """The samples `indices` of a map-style `source`, read through their own `transform` and
    counted in their own skip log `name` (a shallow copy of the source reads them, so that the
    skips its records report are this part's)."""

    def __init__(self, source: MapSource, indices: np.ndarray, transform: Transform, name: str):
        super().__init__(transform, source.num_classes, name)
        self.source = copy.copy(source)  # (its labels, read at start-up, shared)
        self.source.skips = self.skips
        self.indices = indices
        self.class_names, self.category_ids = source.class_names, source.category_ids

    def __len__(self) -> int:
        return len(self.indices)

    def record(self, index: int) -> Record:
        return self.source.record(int(self.indices[index]))

    def describe(self, index: int) -> str:
        return self.source.describe(int(self.indices[index]))

    def image_file(self, index: int) -> Path | None:
        return self.source.image_file(int(self.indices[index]))

    def labels(self, index: int) -> np.ndarray:
        return self.source.labels(int(self.indices[index]))

    def boxes_per_class(self) -> np.ndarray | None:
        if self.source.boxes_per_class() is None:  # (it would read every label file)
            return None
        trained = [self.labels(i) for i in range(len(self))]
        return np.bincount(np.concatenate(trained), minlength=self.num_classes + 1)[1:]


def split_off(
    source,
    share: float,
    train_transform: Transform,
    val_transform: Transform,
    train_empty: bool = True,
) -> tuple[Part, Part]:
    """(training part, validation part) of a training source: `share` of its images held out
    for validation (`hold_out`); `train_empty` False leaves the images without objects to
    train on (`labels`) out of the training part only (validation keeps them, as data.val
    does). Refused, naming data.val_fraction, for a stream (its images cannot be counted) and
    for a source too small to leave images on both sides."""
    key = f"data.val_fraction={share}"
    if isinstance(source, IterableDataset):
        raise ValueError(
            f"{key}: holding out images needs a data set whose images can be counted (a COCO "
            "json, a YOLO or VOC folder, a torch Dataset); a stream cannot: leave "
            "data.val_fraction null and validate on a split of the set's own (data.val.split) "
            "or on some of its parquet files (data.val.data_files, the others as "
            "data.train.data_files)"
        )
    train, val = hold_out(len(source), share)
    if not train_empty:
        train = train[[len(source.labels(int(i))) > 0 for i in train]]
    if not len(train):
        raise ValueError(
            f"{key}: data.train has {counted(len(source), 'image')}; holding out that share "
            "leaves none to train on: hold out a smaller share (0.1: a tenth)"
        )
    held = f"{share * 100:g}% held out by {key}"
    name = source.skips.source
    return (
        Part(source, train, train_transform, f"{name}, less the {held}"),
        Part(source, val, val_transform, f"{name}, the {held}"),
    )
