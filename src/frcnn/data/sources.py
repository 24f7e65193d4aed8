"""What every source shares: decode + transform with bad samples skipped, counted, logged."""

import functools
import itertools
import logging
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset

from frcnn.checks import is_number
from frcnn.data.transforms import Record, SizeMismatch, Transform, upright_size

log = logging.getLogger(__name__)

# PIL's errors for corrupt images, and for images too large to decode safely (a 225-megapixel
# "decompression bomb"; PIL.Image.MAX_IMAGE_PIXELS sets the limit)
UNREADABLE_IMAGE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

# Consecutive unreadable samples after which a map-style source gives up: the data is broken
MAX_CONSECUTIVE_SKIPS = 50


def unreadable(err: BaseException) -> str:
    """How an image that could not be read is reported: its error's type and message, but
    PIL's `cannot identify image file <_io.BytesIO object at 0x7f...>` (it names the bytes it
    was handed; the caller names the file) said as what it means."""
    if isinstance(err, Image.UnidentifiedImageError):
        return f"{type(err).__name__}: no image format that PIL reads (another kind of file?)"
    return f"{type(err).__name__}: {err}"


class SkipLog:
    """Counts skipped or repaired samples per reason and logs each with the running count."""

    def __init__(self, source: str):
        self.source = source
        self.counts: dict[str, int] = {}

    def __call__(self, reason: str, image_id, detail: str = "") -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        log.warning(
            "%s: %s (image %s)%s; %d so far in this process",
            self.source,
            reason,
            image_id,
            f": {detail}" if detail else "",
            self.counts[reason],
            extra={"skipped": (self.source, reason, str(image_id))},
        )

    def naming(self, name: str):
        """This log as a `report(reason, image_id, detail)` that names the sample `name` (its
        file), whatever id the record holds."""
        return lambda reason, image_id, detail="": self(reason, name, detail)


# (source, reason) -> the images skipped or repaired for it in this run, from the skip records
# that this process's loggers handle: its own and its DataLoader workers' (which reach them
# through `datamodule.worker_logs`). Emptied when a run's data module is made; the run's
# summary lists it (app.summary.skip_lines).
SKIPPED: dict[tuple[str, str], set[str]] = {}


def tally(record: logging.LogRecord) -> bool:
    """This module's logger's filter: a skip record's image goes to `SKIPPED`."""
    if hasattr(record, "skipped"):
        source, reason, image_id = record.skipped
        SKIPPED.setdefault((source, reason), set()).add(image_id)
    return True


log.addFilter(tally)


# the photo formats looked for in folders (a YOLO split's, predict.py's input), where PIL reads
# them: HEIC (iPhones') with the `heic` extra's plugin (data.transforms); AVIF from Pillow 11.2
PHOTO_SUFFIXES = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".mpo",
    ".dng", ".jp2", ".avif", ".heic", ".heif",
)  # fmt: skip

HEIC_EXTRA = (
    "; HEIC photos are read with the `heic` extra (in a checkout: `uv sync --extra heic`, or "
    "`pip install -e '.[heic]'`)"
)


@functools.cache
def image_suffixes() -> frozenset[str]:
    """The PHOTO_SUFFIXES that PIL opens here."""
    Image.init()  # (every plugin registered)
    opened = {s for s, name in Image.registered_extensions().items() if name in Image.OPEN}
    # MPO and DNG files open as the JPEG and TIFF they are
    return frozenset(s for s in PHOTO_SUFFIXES if s in opened or s in (".mpo", ".dng"))


def image_files(files: list[Path], where: str) -> list[Path]:
    """The images among `files`, by suffix. Photos in formats PIL does not read here are left
    out, and one warning counts them by format, naming `where` they are."""
    readable = image_suffixes()
    unreadable = set(PHOTO_SUFFIXES) - readable
    unread = Counter(p.suffix.lower() for p in files if p.suffix.lower() in unreadable)
    if unread:
        log.warning(
            "%s: images in formats PIL cannot read here left out (%s): convert them to JPEG or "
            "PNG%s",
            where,
            ", ".join(f"{suffix}: {count}" for suffix, count in sorted(unread.items())),
            HEIC_EXTRA if {".heic", ".heif"} & set(unread) else "",
        )
    return [p for p in files if p.suffix.lower() in readable]


def read_text(path: Path) -> str:
    """A text file of a data set (an annotation file, a label or list file): UTF-8 whatever
    the locale, with or without the byte-order mark that Windows tools write (json and float
    refuse it). Text in another encoding (UTF-16, Latin-1) is refused, naming the file."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text (byte {err.object[err.start]:#x} at position "
            f"{err.start}): save it as UTF-8"
        ) from None


def forward_slashes(path) -> str:
    """A relative path that a file written on Windows names (`images\\train\\a.jpg`), with the
    forward slashes every system reads."""
    return str(path).replace("\\", "/")


def relative_path(path, folder) -> str:
    """`path` as a user reads it: relative to `folder` where it lies in it (`..` resolved),
    else absolute."""
    path, folder = (Path(os.path.abspath(p)) for p in (path, folder))
    return str(path.relative_to(folder) if path.is_relative_to(folder) else path)


IMAGES_CHECKED = 20  # image files looked for at start-up to catch a wrong folder


def other_layout(root: Path) -> str:
    """Where the folder `root`, which the data config asked for could not read, is laid out as
    another one's data, the config that reads it (a first try may name the wrong one), as a
    message's end: " (... data=voc)"; else ""."""
    if (root / "data.yaml").is_file():
        return " (it holds data.yaml: a YOLO data set, data=yolo)"
    if (root / "Annotations").is_dir() or (root / "ImageSets").is_dir():
        return " (it is laid out as Pascal VOC: data=voc)"
    found = sorted(root.glob("*.json")) + sorted(root.glob("annotations/*.json"))
    if found:
        return (
            f" (it holds {relative_path(found[0], root)}: for a COCO json, data=coco_files with "
            "data.train.annotation_file and data.train.image_dir)"
        )
    return ""


def check_images_exist(paths: list[Path], where: str, fix: str) -> None:
    """Stop at start-up where none of a source's first image files (`paths`) exists: a wrong
    folder would otherwise skip image after image until the run gives up, naming no setting.
    A few missing files are skipped and counted as the run goes."""
    if paths and not any(path.is_file() for path in paths):
        raise FileNotFoundError(
            f"{where}: none of its first {len(paths)} images exists (e.g. {str(paths[0])!r}): {fix}"
        )


def check_image_sizes(images: list[tuple[Path, tuple[int, int] | None]], where: str) -> None:
    """Stop at start-up where more than a fifth of the first images whose size the annotation
    file records (`images`: (path, (width, height) or None)) are of another size, turned
    upright or not: images resized after they were annotated, whose boxes fit other pixels
    (each would be skipped at run time, `SizeMismatch`). Their headers alone are read."""
    checked, wrong = 0, []
    for path, size in images:
        if not size:
            continue
        try:
            with Image.open(path) as image:
                stored, upright = image.size, upright_size(image)
        except UNREADABLE_IMAGE:  # (missing or corrupt: skipped, counted at run time)
            continue
        checked += 1
        if tuple(size) not in (stored, upright):
            wrong.append((path, size, stored))
    if wrong and len(wrong) > checked / 5:
        path, (width, height), (file_width, file_height) = wrong[0]
        raise ValueError(
            f"{where}: {len(wrong)} of its first {checked} images are not the size the "
            f"annotation file records (e.g. {path.name}: {file_width} x {file_height} pixels, "
            f"recorded {width} x {height}): were they resized after they were annotated? "
            "Their boxes are in the recorded size's pixels: give the images they were drawn on"
        )


FLAG_WORDS = {"0": 0, "1": 1, "false": False, "true": True}


def object_flag(value) -> bool:
    """An object's flag (COCO's `iscrowd`, VOC's `<difficult>`) as data sets write it: 0 or 1,
    false or true, null, or one of those as a string ("0", "true"); ValueError for any other
    value, which Python would take as true ("0", "no") or false, unasked."""
    if isinstance(value, str):
        value = FLAG_WORDS.get(value.strip().lower(), value)
    if value is None or isinstance(value, bool) or (is_number(value) and value in (0, 1)):
        return bool(value)
    raise ValueError(f"{value!r} is neither 0 nor 1")


def clean_annotations(record: Record, num_classes: int, skips: Callable) -> Record:
    """Drop malformed annotations: non-finite or inverted boxes, labels out of 1..num_classes.

    Returns the record with the annotations that are kept.
    """
    boxes = np.asarray(record.boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(record.labels, dtype=np.int64).reshape(-1)
    if len(boxes) != len(labels):
        skips("annotations with mismatched boxes and labels dropped", record.image_id)
        return Record(record.image, np.zeros((0, 4), np.float32), np.zeros(0), record.image_id)
    ok = np.isfinite(boxes).all(1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    ok &= (labels >= 1) & (labels <= num_classes)
    if not ok.all():
        skips("malformed boxes dropped", record.image_id, f"{int((~ok).sum())} of {len(ok)}")
    return record.subset(ok)


def transform_record(record: Record, transform: Transform, num_classes: int, skips: Callable, rng):
    """Record -> (image, target), or None if the image cannot be decoded; what is dropped or
    skipped is told to `skips(reason, image_id, detail)` (a `SkipLog`, or its `naming`)."""
    record = clean_annotations(record, num_classes, skips)
    try:
        return transform(record, rng, skips)
    except SizeMismatch as err:
        skips("image not the size its annotation records skipped", record.image_id, str(err))
        return None
    except UNREADABLE_IMAGE as err:
        skips("unreadable image skipped", record.image_id, unreadable(err))
        return None


class MapSource(Dataset):
    """A map-style source: subclasses give `__len__`, `record(index)` and `describe(index)`.

    A sample whose image cannot be read is counted and logged, then, in training
    (`substitute=True`), replaced by the next readable one so that batches keep their size; in
    validation (`substitute=False`) it is None, which `collate` leaves out: no image is ever
    counted twice. An error of a wrong setting begins with the setting's own name
    (`annotation_file='x.json': no such file`): the data module names it in full
    (`data.train.annotation_file=...`, `datamodule.name_in_full`).
    """

    def __init__(self, transform: Transform, num_classes: int, name: str):
        self.transform = transform
        self.num_classes = num_classes
        self.skips = SkipLog(name)
        self.substitute = True
        self._rng = None

    def record(self, index: int) -> Record:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """How a log names sample `index` (its image id, its file)."""
        return str(index)

    def image_file(self, index: int) -> Path | None:
        """The file sample `index` reads its image from, for sources of image files."""
        return None

    def boxes_per_class(self) -> np.ndarray | None:
        """(C,) how many boxes each class trains on, where the source holds its labels in
        memory (a COCO json, VOC's xml files); None where that would read every file."""
        return None

    def labels(self, index: int) -> np.ndarray:
        """The labels that sample `index` trains on (crowds and difficult objects left out),
        for repeat-factor sampling; sources that know them without reading the image say so."""
        record = self.record(index)
        labels = np.asarray(record.labels, dtype=np.int64).reshape(-1)
        crowd = np.zeros(len(labels), bool) if record.iscrowd is None else record.iscrowd
        trained = ~np.asarray(crowd, bool) & (labels >= 1) & (labels <= self.num_classes)
        return labels[trained]  # (a label out of range is dropped in training too)

    def __getitem__(self, index: int):
        if self._rng is None:  # one generator per process, for flips: seeded by the run's seed
            # (torch's seed in the main process, the worker's own seed, derived from it, in a
            # DataLoader worker)
            self._rng = np.random.default_rng(torch.initial_seed())
        for attempt in range(MAX_CONSECUTIVE_SKIPS if self.substitute else 1):
            i = (index + attempt) % len(self)
            try:
                record = self.record(i)
            except (OSError, ValueError, KeyError) as err:
                self.skips("unreadable record skipped", self.describe(i), unreadable(err))
                continue
            # a source of image files: the logs name the file (`describe`), not the record's
            # id, which is a position in the split for VOC and YOLO
            report = (
                self.skips if self.image_file(i) is None else self.skips.naming(self.describe(i))
            )
            sample = transform_record(record, self.transform, self.num_classes, report, self._rng)
            if sample is not None or not self.substitute:
                return sample
        if not self.substitute:
            return None
        raise RuntimeError(
            f"{self.skips.source}: {MAX_CONSECUTIVE_SKIPS} consecutive samples from index "
            f"{index} could not be read; is the data set intact?"
        )


def first_samples(source, count: int) -> list:
    """The first `count` readable (image, target) samples of a source, indexed or streamed."""
    if isinstance(source, IterableDataset):
        samples = iter(source)
    else:
        samples = (source[i] for i in range(len(source)))
    return list(itertools.islice((s for s in samples if s is not None), count))
