"""Detection data sets streamed from the Hugging Face hub (or local parquet copies with their
features): any such set (`HubDetection`, its columns and box format read from the data:
`hub_schema`), and COCO (`HubCOCO`, whose schema and xyxy boxes are known)."""

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from torch.utils.data import IterableDataset, get_worker_info

from frcnn.checks import check_flag, check_number, check_path, check_split, is_list
from frcnn.data.coco_classes import COCO_CATEGORY_IDS, COCO_CLASSES
from frcnn.data.hub_schema import (
    Schema,
    check_categories,
    decide_box_format,
    image_size,
    names_to_give,
    read_schema,
    row_id,
    row_image,
    row_objects,
    row_size,
    to_xyxy,
)
from frcnn.data.sources import MAX_CONSECUTIVE_SKIPS, SkipLog, other_layout, transform_record
from frcnn.data.transforms import Record, Transform

log = logging.getLogger(__name__)

HUB_NAME = "detection-datasets/coco"


def hub_features():
    """The `datasets.Features` of `detection-datasets/coco`, for writing a local mirror."""
    from datasets import ClassLabel, Features, Image, Sequence, Value

    objects = {
        "bbox_id": Value("int64"),
        "category": ClassLabel(names=list(COCO_CLASSES)),
        "bbox": Sequence(Value("float64"), length=4),
        "area": Value("int64"),
    }
    return Features(
        {
            "image_id": Value("int64"),
            "image": Image(),
            "width": Value("int64"),
            "height": Value("int64"),
            "objects": Sequence(objects),
        }
    )


# detection-datasets/coco: its columns and box format are known (DESIGN.md's checked facts)
COCO_SCHEMA = Schema(
    "image", "image_id", "objects", "bbox", "category", list(COCO_CLASSES), "width", "height"
)


class HubDetection(IterableDataset):
    """One split of a hub detection data set as a stream, sharded over DataLoader workers and
    distributed ranks.

    The image, id, box and category columns and the class names (the category's ClassLabel;
    `class_names` for a plain integer category, whose first rows' values must lie in
    0..C-1) are read from the data set's features (`hub_schema.read_schema`); the boxes' format
    is `box_format` (xyxy, xywh, cxcywh) and `normalized`, or, where not given, read from the
    first `rows_to_check` rows when only one reading fits them all, and logged; else the run
    stops at start-up naming `data.box_format`. Labels are the category's value + 1.

    Training streams reshuffle every epoch (`set_epoch`) through a seeded buffer. A `limit`
    reads exactly the first `limit` images of the split, the same ones for any number of
    shards, workers and ranks (validation subsets); without one, every image is read once per
    pass. `data_files` (a list of parquet paths or globs) reads a local copy with the hub's
    features instead of the hub. A dropped connection is retried by `datasets` in place, up to
    `retries` times `backoff_s` seconds apart: the stream goes on where it stopped, nothing
    repeated or lost; after the last retry the run stops with a message (resume it from its
    last.ckpt). Rows that give no sample (unreadable image, malformed record) are skipped and
    counted; `max_skips_in_a_row` of them in a row stop the run: the data is not what it should
    be (another schema, a broken copy), and a stream of nothing would run empty epochs forever.
    `keep_empty` False leaves out the rows without objects (negatives), as they stream.
    """

    def __init__(
        self,
        transform: Transform,
        split: str = "train",
        name: str | None = None,
        box_format: str | None = None,
        normalized: bool | None = None,
        rows_to_check: int = 32,
        revision: str | None = None,
        data_files: list[str] | str | None = None,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        limit: int | None = None,
        retries: int = 20,
        backoff_s: float = 5.0,
        max_skips_in_a_row: int = MAX_CONSECUTIVE_SKIPS,
        keep_empty: bool = True,
        class_names: list[str] | None = None,
    ):
        if limit is not None:  # (null: the whole split)
            check_number("limit", limit, 1, integer=True)
        check_number("max_skips_in_a_row", max_skips_in_a_row, 1, integer=True)
        check_number("shuffle_buffer", shuffle_buffer, 1, integer=True)
        check_number("retries", retries, 0, integer=True)
        check_number("backoff_s", backoff_s, 0)
        check_number("seed", seed, 0, integer=True)  # (NumPy's generators take no other)
        check_flag("shuffle", shuffle)
        check_flag("keep_empty", keep_empty)
        check_flag("normalized", normalized, None)
        check_split("split", split)
        if name is not None:  # a hub name, or a local folder
            check_path("name", name)
        if data_files is not None:  # a plain list: not a single string, not Hydra's ListConfig
            data_files = list(data_files) if is_list(data_files) else [data_files]
            for file in data_files:
                check_path("data_files", file)
            data_files = [str(file) for file in data_files]
        self.transform = transform
        self.split, self.name, self.revision, self.data_files = split, name, revision, data_files
        self.shuffle, self.shuffle_buffer, self.seed, self.limit = (
            shuffle,
            shuffle_buffer,
            seed,
            limit,
        )
        self.retries, self.backoff_s = retries, backoff_s
        self.max_skips_in_a_row, self.keep_empty = max_skips_in_a_row, keep_empty
        # in shared memory: persistent DataLoader workers keep their copy of this object, and
        # must still see the epoch that the main process sets
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.rank, self.world_size = 0, 1
        if not name and not data_files:
            raise ValueError("data.name: name the hub data set, or give its local data_files")
        self.skips = SkipLog(f"hub {self._where()}, split {split}")
        self._dataset = self._load()
        self.schema = self._schema(class_names)
        self.class_names = self.schema.class_names
        self.num_classes = len(self.class_names)
        self.category_ids = list(range(self.num_classes))  # the category's own values
        self.box_format, self.normalized = box_format, normalized
        first = []
        if None in (box_format, normalized) or class_names is not None or not self.num_classes:
            first = list(self._dataset.take(rows_to_check))
        if not self.num_classes:  # a category that does not name its classes, and no list
            raise ValueError(names_to_give(first, self.schema, self._where()))
        if class_names is not None and first:
            check_categories(first, self.schema, self._where())
        if box_format is None or normalized is None:
            try:
                rows = [self._raw_boxes(example) for example in first]
            except ValueError as err:  # (boxes of other than 4 values)
                raise ValueError(f"{self._where()}: {err}") from None
            self.box_format, self.normalized, how = decide_box_format(
                rows, box_format, normalized, self._where()
            )
            if rank_zero_only.rank == 0:  # once, not once per DDP process
                log.info(
                    "%s: boxes are %s in %s (%s)", self._where(), self.box_format,
                    "normalised coordinates" if self.normalized else "pixels", how,
                )  # fmt: skip

    def _where(self) -> str:
        return f"data_files={self.data_files!r}" if self.data_files else repr(self.name)

    def _schema(self, class_names: list[str] | None) -> Schema:
        """The set's columns (`read_schema`); where they are not a detection set's and `name`
        is a local folder of another layout (VOC's, YOLO's), the error names its data config."""
        local = self.data_files is None and Path(self.name).is_dir()
        hint = other_layout(Path(self.name)) if local else ""
        if self._dataset.features is None:
            raise ValueError(
                f"{self._where()} has no datasets features (written without them?): its "
                f"columns and class names cannot be read{hint}"
            )
        try:
            return read_schema(self._dataset.features, self._where(), class_names)
        except ValueError as err:
            if hint:
                raise ValueError(f"{err}{hint}") from None
            raise

    def _raw_boxes(self, example: dict) -> tuple[np.ndarray, tuple[int, int]]:
        return row_objects(example, self.schema)[0], image_size(example, self.schema)

    def _record(self, example: dict) -> Record:
        """A row -> Record: boxes xyxy in pixels, labels 1..C, crowds where the set flags them."""
        data = row_image(example, self.schema)
        boxes, classes, crowds = row_objects(example, self.schema)
        size = image_size(example, self.schema, data) if self.normalized else None
        boxes = to_xyxy(boxes, self.box_format, self.normalized, size)
        recorded = row_size(example, self.schema)
        crowds = crowds if self.schema.iscrowd else None
        return Record(data, boxes, classes + 1, row_id(example, self.schema), crowds, size=recorded)

    def _load(self):
        import datasets

        if self.data_files is not None:
            self._check_local_files()
        elif not Path(self.name).is_dir():  # (a local folder in a hub layout: read as the hub's)
            self._check_hub()
        try:
            if self.data_files is not None:
                files = {self.split: self.data_files}
                ds = datasets.load_dataset(
                    "parquet", data_files=files, split=self.split, streaming=True
                )
            else:
                ds = datasets.load_dataset(
                    self.name, split=self.split, revision=self.revision, streaming=True
                )
        except pa.ArrowException as err:  # (a ValueError too) a file that is no parquet
            files = " (data_files: a hub data set's parquet files)" if self.data_files else ""
            raise ValueError(f"{self._where()}: {err}{files}") from err
        except ValueError as err:  # datasets' error for an unknown split
            raise ValueError(f"split={self.split!r}: {err}") from err
        except (ConnectionError, OSError) as err:
            if self.data_files is not None:
                raise OSError(f"data_files={self.data_files!r}: {err}") from err
            raise self._offline_error(err) from err
        # decode in our transform, where a corrupt image is skipped rather than retried
        images = [c for c, f in (ds.features or {}).items() if isinstance(f, datasets.Image)]
        # (none: a set without an image column, which `_schema` names)
        return ds.cast_column(images[0], datasets.Image(decode=False)) if images else ds

    def _check_local_files(self) -> None:
        """A local path or glob in `data_files` that matches no file fails here, named."""
        import glob

        for pattern in self.data_files:
            if "://" not in pattern and not glob.glob(pattern):
                raise FileNotFoundError(
                    f"data_files: no such local file {pattern!r}. Point it at the "
                    "parquet files of your copy of the data set (globs allowed)."
                )

    def _check_hub(self) -> None:
        """One quick request, so that a machine without network fails in a second, not after
        the minute of retries inside `datasets`."""
        import huggingface_hub

        if huggingface_hub.constants.HF_HUB_OFFLINE:
            return  # offline mode: datasets may still find the files in its cache
        try:
            huggingface_hub.HfApi().dataset_info(self.name, revision=self.revision, timeout=10)
        except huggingface_hub.errors.RepositoryNotFoundError as err:
            raise ValueError(f"name={self.name!r}: no such data set on the hub") from err
        except Exception as err:  # network errors come in several libraries' types
            raise self._offline_error(err) from err

    def _offline_error(self, err: Exception) -> ConnectionError:
        return ConnectionError(
            f"Could not reach the Hugging Face hub for {self.name!r} ({err}). Offline, point "
            "the run at a local copy of its parquet files: data=coco "
            "data.train.data_files='/path/coco/data/train-*.parquet' "
            "data.val.data_files='/path/coco/data/val-*.parquet'"
        )

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle: the next pass over the stream uses this epoch's order."""
        self._epoch.fill_(epoch)

    def set_rank(self, rank: int, world_size: int) -> None:
        """Give this process its own part of the stream (distributed training)."""
        self.rank, self.world_size = rank, world_size

    def _stream(self):
        """This process's part of the training stream (or of the whole split, `limit` null):
        split over ranks here, over DataLoader workers by `datasets` itself."""
        from datasets.distributed import split_dataset_by_node

        ds = self._dataset
        if self.world_size > 1:
            ds = split_dataset_by_node(ds, rank=self.rank, world_size=self.world_size)
        if self.shuffle:
            ds = ds.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
            ds.set_epoch(self.epoch)
        return ds

    def readers(self) -> int | None:
        """How many DataLoader workers of this process get examples: its stream's shards
        (`datasets` gives each worker whole shards; a worker beyond them stops at once, with a
        warning every epoch), or None where every worker reads (a `limit`'s subset)."""
        return None if self.limit is not None else self._stream().num_shards

    def _subset(self, worker):
        """This reader's share of the first `limit` examples of the split, in the split's order.

        Every (rank, worker) reader streams those `limit` examples whole (`.iter` is not sharded
        over workers by `datasets`) and keeps every n-th, n = ranks x workers: the subset is the
        same for any number of shards, workers and ranks, which `datasets`' own sharding cannot
        give (a worker beyond the number of shards reads nothing). Images are decoded only by
        the reader that keeps them.
        """
        num_workers = worker.num_workers if worker else 1
        readers = self.world_size * num_workers
        reader = self.rank * num_workers + (worker.id if worker else 0)
        index = 0
        for batch in self._dataset.take(self.limit).iter(batch_size=16):
            for row in range(len(batch[self.schema.image])):
                if index % readers == reader:
                    yield {key: values[row] for key, values in batch.items()}
                index += 1

    def __iter__(self):
        import datasets
        from datasets.utils import file_utils

        # datasets retries each read in place (no example lost or repeated): tune it here, in
        # the process that reads (DataLoader workers included). It retries its HTTP client's
        # errors; a connection reset or time-out from the socket layer is as transient.
        retried = file_utils.CONNECTION_ERRORS_TO_RETRY
        file_utils.CONNECTION_ERRORS_TO_RETRY = tuple({*retried, ConnectionError, TimeoutError})
        datasets.config.STREAMING_READ_MAX_RETRIES = self.retries
        datasets.config.STREAMING_OPEN_MAX_RETRIES = self.retries
        datasets.config.STREAMING_READ_RETRY_INTERVAL = self.backoff_s
        datasets.config.STREAMING_OPEN_RETRY_INTERVAL = self.backoff_s
        worker = get_worker_info()
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker.id if worker else 0])
        examples = self._stream() if self.limit is None else self._subset(worker)
        in_a_row = 0
        try:
            for example in examples:  # a plain loop: datasets shards the stream over workers
                if not self.keep_empty and self._without_objects(example):
                    continue  # as asked
                sample = self._sample(example, rng)
                if sample is not None:
                    in_a_row = 0
                    yield sample
                    continue
                in_a_row += 1
                if in_a_row == self.max_skips_in_a_row:
                    raise ValueError(self._nothing_usable())
        except ConnectionError as err:  # what is left after datasets' last retry
            raise ConnectionError(
                f"Streaming {self.name!r} ({self.split}) failed after {self.retries} retries, "
                f"{self.backoff_s} s apart: {err}. Resume the run from its last.ckpt "
                "(ckpt_path=...) once the connection is back; offline, download the parquet "
                "files and set data.train.data_files / data.val.data_files to them."
            ) from err
        except (OSError, pa.ArrowInvalid) as err:  # a local file: no retry helps
            raise OSError(f"data_files={self.data_files!r}: {self._unreadable(err)}") from err

    def _nothing_usable(self) -> str:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in self.skips.counts.items())
        return (
            f"{self.skips.source}: {self.max_skips_in_a_row} rows in a row of {self._where()} "
            f"gave no sample ({reasons} in this process): are its boxes {self.box_format} in "
            f"{'normalised coordinates' if self.normalized else 'pixels'} (data.box_format, "
            "data.normalized), its images intact? (data max_skips_in_a_row sets the number)"
        )

    def _unreadable(self, err: Exception) -> str:
        """The local parquet files that cannot be read, named, or else `err` as it is."""
        import glob

        import pyarrow.parquet as pq

        broken = []
        for path in sorted({p for f in self.data_files or [] for p in glob.glob(f)}):
            try:
                pq.read_metadata(path)
            except (OSError, pa.ArrowInvalid) as file_err:
                broken.append(f"{path} ({type(file_err).__name__}: {file_err})")
        detail = f"{type(err).__name__}: {err}"
        return f"cannot read {'; '.join(broken)}" if broken else detail

    def _without_objects(self, example: dict) -> bool:
        """Whether a row holds no objects (crowd regions alone count as none, as in a COCO
        json; a malformed row is `_sample`'s to count)."""
        try:
            return not (~row_objects(example, self.schema)[2]).any()
        except (KeyError, TypeError, ValueError):
            return False

    def _sample(self, example: dict, rng):
        try:
            record = self._record(example)
        except (KeyError, TypeError, ValueError, OSError) as err:
            image = example.get(self.schema.image) or {}
            where = example.get(self.schema.image_id) if self.schema.image_id else image.get("path")
            self.skips("malformed record skipped", where, str(err))
            return None
        return transform_record(record, self.transform, self.num_classes, self.skips, rng)


class HubCOCO(HubDetection):
    """COCO 2017 from `detection-datasets/coco` (or a local copy): its columns and its boxes
    (xyxy, pixels) are known; labels 1..80 in COCO's order, COCO's category ids."""

    def __init__(self, transform: Transform, split: str = "train", name: str = HUB_NAME, **kw):
        super().__init__(transform, split, name, box_format="xyxy", normalized=False, **kw)
        self.category_ids = list(COCO_CATEGORY_IDS)

    def _schema(self, class_names: list[str] | None) -> Schema:
        return COCO_SCHEMA
