"""COCO in its official layout: annotations/instances_*.json and an image folder."""

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np

from frcnn.checks import check_flag, path_of
from frcnn.data.sources import (
    IMAGES_CHECKED,
    MapSource,
    check_image_sizes,
    check_images_exist,
    forward_slashes,
    object_flag,
    read_text,
)
from frcnn.data.transforms import Record, Transform, id_number, recorded_size

# far more than a real image holds: the rest are dropped, counted (a file's runaway copy)
MAX_ANNOTATIONS_PER_IMAGE = 10_000


class COCOFolder(MapSource):
    """Images and boxes of one COCO annotation file.

    COCO category ids (1..90 with gaps) map to contiguous labels 1..C in id order; crowd
    annotations are not training targets but travel as `crowd_boxes` for the evaluation to
    ignore, and every annotation's `area` goes with it (COCO's small / medium / large ranges
    are those of the mask area); images without annotations are kept unless `keep_empty` is
    False (an image with only crowds, malformed boxes or undeclared categories is as empty).
    """

    def __init__(
        self,
        transform: Transform,
        annotation_file: str,
        image_dir: str,
        keep_empty: bool = True,
    ):
        check_flag("keep_empty", keep_empty)
        annotation_file = path_of("annotation_file", annotation_file)
        image_dir = path_of("image_dir", image_dir)
        named = f"annotation_file={str(annotation_file)!r}"
        coco = read_annotation_file(annotation_file, image_dir, named)
        category_ids = checked_category_ids(coco["categories"], named)
        self.label_of = {cid: i + 1 for i, cid in enumerate(category_ids)}
        names = {c["id"]: c["name"] for c in coco["categories"]}
        self.class_names = [names[cid] for cid in category_ids]
        self.category_ids = category_ids
        super().__init__(
            transform, len(category_ids), name=f"coco json {annotation_file}, images in {image_dir}"
        )

        images = unique_images(coco["images"], self.skips)
        read_crowd_flags(coco["annotations"], named)
        per_image = annotations_per_image(coco["annotations"], images, self.skips)
        check_file_names(images, image_dir, named)
        check_boxes(images, per_image, named)
        self.image_dir = image_dir
        table = annotation_table([per_image[img["id"]] for img in images], self.label_of)
        kept = images if keep_empty else [images[i] for i in table.images_with_objects()]
        if not kept:
            raise ValueError(empty_set(coco["images"], images, keep_empty, named))
        # only what training reads, in arrays: the parsed file (a json of COCO train2017's
        # size, polygons and urls included: 2.4 GB of Python objects, bench/coco_json_memory.py)
        # would stay in every process, each DDP rank's included
        ids = [img["id"] for img in kept]
        self.image_ids = np.array(
            [id_number(i) if isinstance(i, str) else i for i in ids], np.int64
        )
        self.file_names = [forward_slashes(img["file_name"]) for img in kept]
        sizes = [recorded_size(img.get("width"), img.get("height")) or (0, 0) for img in kept]
        self.sizes = np.array(sizes, np.int64).reshape(-1, 2)  # 0: not recorded
        if len(kept) < len(images):  # the images kept, their rows and starts their own
            table = annotation_table([per_image[img["id"]] for img in kept], self.label_of)
        self.annotations = table
        check_images_exist(
            [image_dir / name for name in self.file_names[:IMAGES_CHECKED]],
            f"image_dir={str(image_dir)!r}",
            "point image_dir at the folder the file's file_name values are relative to (one "
            "level up where they hold a folder)",
        )
        check_image_sizes(
            [
                (image_dir / name, (int(w), int(h)) if min(w, h) > 0 else None)
                for name, (w, h) in zip(self.file_names[:IMAGES_CHECKED], self.sizes, strict=False)
            ],
            named,
        )

    def __len__(self) -> int:
        return len(self.image_ids)

    def describe(self, index: int) -> str:
        return f"{self.image_ids[index]} ({self.file_names[index]})"

    def image_file(self, index: int) -> Path:
        return self.image_dir / self.file_names[index]

    def boxes_per_class(self) -> np.ndarray:
        table = self.annotations
        return np.bincount(table.labels[table.trained], minlength=self.num_classes + 1)[1:]

    def labels(self, index: int) -> np.ndarray:
        rows = self.annotations.rows(index)
        return self.annotations.labels[rows][self.annotations.trained[rows]]

    def record(self, index: int) -> Record:
        table, image_id = self.annotations, int(self.image_ids[index])
        rows = table.rows(index)
        if index in table.unknown_categories:
            ids = str(table.unknown_categories[index])
            self.skips("annotations with unknown category ids dropped", self.describe(index), ids)
            rows = rows[table.labels[rows] > 0]
        corner, side = table.boxes[rows, :2], table.boxes[rows, 2:]  # the file's xywh
        boxes = np.concatenate([corner, corner + side], axis=1)
        # encoded bytes: decoding happens in the transform, where a corrupt file is skipped
        image = (self.image_dir / self.file_names[index]).read_bytes()
        size = tuple(int(v) for v in self.sizes[index])
        return Record(
            image, boxes, table.labels[rows], image_id, table.iscrowd[rows], table.area[rows],
            size if min(size) > 0 else None,
        )  # fmt: skip


def read_annotation_file(annotation_file: Path, image_dir: Path, named: str) -> dict:
    """The parsed json (`read_text`: UTF-8, with or without a byte-order mark); a missing file
    or folder, invalid or too deeply nested JSON or JSON that is no COCO annotation file
    (`check_layout`) is refused with a message that names the setting."""
    if annotation_file.is_dir():  # (Roboflow's export: the file is in each split's folder)
        inside = sorted(p.name for p in annotation_file.glob("*.json"))
        holds = f": it holds {', '.join(inside[:8])}" if inside else ", with no json file in it"
        raise FileNotFoundError(f"{named} is a folder{holds}; give the annotation file")
    if not annotation_file.is_file():
        raise FileNotFoundError(f"{named}: no such file")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image_dir={str(image_dir)!r}: no such folder")
    try:
        coco = json.loads(read_text(annotation_file))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{named} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno} "
            f"({not_json_hint(annotation_file)})"
        ) from None
    except RecursionError:
        raise ValueError(f"{named} nests its JSON too deep to read") from None
    check_layout(coco, named)
    return coco


def check_layout(coco, named: str) -> None:
    """Refuse JSON that is no COCO annotation file (an object whose `images`, `annotations`
    and `categories` are lists): a file of detections (a list), an image-info file of a test
    split (no annotations), a captions file (no categories)."""
    if not isinstance(coco, dict):
        raise ValueError(
            f"{named} holds a JSON {type(coco).__name__}, not a COCO annotation file (an object "
            "of images, annotations and categories)"
            + (": a file of detections?" if isinstance(coco, list) else "")
        )
    lists = ("images", "annotations", "categories")
    missing = [key for key in lists if not isinstance(coco.get(key), list)]
    if missing:
        test_split = missing == ["annotations"]
        raise ValueError(
            f"{named} has no {' or '.join(missing)} list: a COCO annotation file has images, "
            "annotations (boxes) and categories"
            + (" (a test split's image-info file has no boxes)" if test_split else "")
        )


def read_crowd_flags(annotations: list[dict], named: str) -> None:
    """Each annotation's `iscrowd` as a bool, in place. COCO writes 0 or 1; false, true, null
    and those as strings read so too (`object_flag`). Any other value stops the start-up, shown."""
    for ann in annotations:
        flag = ann.get("iscrowd", 0)
        try:
            ann["iscrowd"] = object_flag(flag)
        except ValueError:
            raise ValueError(
                f"{named}: annotation {ann.get('id')!r}'s iscrowd is {flag!r}: COCO's iscrowd is "
                "0 (an object) or 1 (a crowd region, left out of training)"
            ) from None


def annotations_per_image(annotations: list[dict], images: list[dict], skips) -> dict:
    """image id -> its annotations, in the file's order. Annotations of images the file does
    not list, and those beyond `MAX_ANNOTATIONS_PER_IMAGE` of one image, are dropped, counted
    and logged."""
    per_image = {img["id"]: [] for img in images}
    orphans = [ann for ann in annotations if ann.get("image_id") not in per_image]
    for ann in annotations:
        if ann.get("image_id") in per_image:
            per_image[ann["image_id"]].append(ann)
    if orphans:
        skips(
            "annotations of images missing from the file dropped",
            sorted({a.get("image_id") for a in orphans}, key=str)[:10],
            f"{len(orphans)} annotations",
        )
    cap = MAX_ANNOTATIONS_PER_IMAGE
    for image_id in [i for i, anns in per_image.items() if len(anns) > cap]:
        count = len(per_image[image_id])
        skips(f"annotations beyond {cap} per image dropped", image_id, f"{count - cap} of {count}")
        per_image[image_id] = per_image[image_id][:cap]
    return per_image


def check_file_names(images: list[dict], image_dir: Path, named: str) -> None:
    """Refuse a file whose image file names reach outside `image_dir` (absolute, or ../)."""
    outside = next((img for img in images if leaves_folder(img.get("file_name", ""))), None)
    if outside:
        raise ValueError(
            f"{named}: image {outside['id']}'s file_name {outside.get('file_name')!r} lies "
            f"outside image_dir {str(image_dir)!r} (an absolute path or ../): point "
            "image_dir at a folder that holds every image, with file names relative to it"
        )


def not_json_hint(file: Path) -> str:
    """What a file that is no JSON may be instead, by its suffix: another format's annotations
    (and the data config that reads them), else a download cut short."""
    if file.suffix.lower() in (".yaml", ".yml"):
        return f"a YOLO data set's yaml? data=yolo data.root={str(file)!r}"
    if file.suffix.lower() == ".xml":
        return f"a Pascal VOC annotation? data=voc data.root={str(file.parent.parent)!r}"
    return "a truncated download?"


class AnnotationTable(NamedTuple):
    """A file's annotations, one row each, an image's rows contiguous: boxes (M, 4) xywh
    pixels (NaN where the file's `bbox` is no 4 numbers: dropped and counted when read), labels
    (M,) 1..C (0: a category id the file does not declare), iscrowd (M,), area (M,) pixels;
    trained (M,): an object training learns from (a box, a declared category, no crowd);
    starts (N + 1,) each image's first row; unknown_categories: image index -> those ids."""

    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray
    trained: np.ndarray
    starts: np.ndarray
    unknown_categories: dict[int, list]

    def rows(self, index: int) -> np.ndarray:
        return np.arange(self.starts[index], self.starts[index + 1])

    def images_with_objects(self) -> np.ndarray:
        """The indices of the images with a row training learns from (`keep_empty=false`:
        crowds alone, malformed boxes alone or undeclared categories alone leave an image as
        empty as none)."""
        image_of_row = np.repeat(np.arange(len(self.starts) - 1), np.diff(self.starts))
        return np.unique(image_of_row[self.trained])


def annotation_table(per_image: list[list[dict]], label_of: dict[int, int]) -> AnnotationTable:
    """The annotations of each image, in image order -> an `AnnotationTable`."""
    anns = [ann for image in per_image for ann in image]
    boxes = numbers([a.get("bbox") for a in anns], xywh).reshape(-1, 4)
    ids = [a.get("category_id") for a in anns]
    labels = np.array([label_of.get(i, 0) if isinstance(i, int) else 0 for i in ids], np.int64)
    area = numbers([a.get("area") for a in anns], number)  # null: NaN
    area = np.where(np.isnan(area), boxes[:, 2] * boxes[:, 3], area)  # none given: the box's
    starts = np.cumsum([0] + [len(image) for image in per_image])
    unknown: dict[int, dict] = {}
    for row in np.flatnonzero(labels == 0):  # undeclared category ids: few rows, if any
        image = int(np.searchsorted(starts, row, "right")) - 1
        unknown.setdefault(image, {})[repr(ids[row])] = ids[row]  # each id once
    unknown = {index: sorted(found.values(), key=str) for index, found in unknown.items()}
    iscrowd = np.array([a["iscrowd"] for a in anns], bool)  # (read_crowd_flags)
    trained = ~iscrowd & np.isfinite(boxes).all(1) & (labels > 0)
    return AnnotationTable(boxes, labels, iscrowd, area, trained, starts, unknown)


def numbers(values: list, each: Callable) -> np.ndarray:
    """`values` as a float32 array, in one pass where numpy can read them all (a well-formed
    file), else `each` of them."""
    try:
        return np.array(values, np.float32)
    except (ValueError, TypeError):
        return np.array([each(v) for v in values], np.float32)


def number(value) -> float:
    """A json number as a float; NaN for anything else (null, a string, true)."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else np.nan


def xywh(bbox) -> list[float]:
    """An annotation's `bbox`; NaN where it is no 4 numbers."""
    return [number(v) for v in bbox] if isinstance(bbox, list) and len(bbox) == 4 else [np.nan] * 4


BOXES_CHECKED = 1000  # annotations read at start-up to catch a wrong box format


def check_boxes(images: list[dict], per_image: dict, named: str) -> None:
    """Stop at start-up where more than a fifth of the first annotations of images whose size
    the file records are no `[x, y, width, height]` box within their image: a file of another
    box format (xyxy) would otherwise train on the wrong geometry, silently."""
    rows = []
    for image in images:
        size = recorded_size(image.get("width"), image.get("height"))
        if size:
            rows += [(a.get("bbox"), size) for a in per_image[image["id"]] if not a.get("iscrowd")]
        if len(rows) >= BOXES_CHECKED:
            break
    wrong = [(box, size) for box, size in rows if not within(xywh(box), size)]
    if rows and len(wrong) > len(rows) / 5:
        box, (width, height) = wrong[0]
        raise ValueError(
            f"{named}: {len(wrong)} of the first {len(rows)} boxes are no [x, y, width, height] "
            f"within their image (e.g. {box} in a {width} x {height} image): COCO's bbox is "
            "x_min, y_min, width, height in pixels; is the file in another box format (xyxy)?"
        )


def within(box: list[float], size: tuple[int, int]) -> bool:
    """Whether an `[x, y, width, height]` box (NaN: none) lies within a width x height image."""
    x, y, w, h = box
    return w > 0 and h > 0 and x + w <= size[0] + 1 and y + h <= size[1] + 1


def checked_category_ids(categories: list[dict], named: str) -> list[int]:
    """The sorted category ids; an id that is not an integer or is listed twice is refused
    (it would make two classes of one name, or fail to sort)."""
    ids = [c.get("id") for c in categories]
    wrong = [i for i in ids if not isinstance(i, int) or isinstance(i, bool)]
    if wrong:
        raise ValueError(f"{named}: category ids must be integers, not {wrong[:5]}")
    twice = sorted(i for i, count in Counter(ids).items() if count > 1)
    if twice:
        raise ValueError(f"{named}: category ids listed twice: {twice[:10]}")
    return sorted(ids)


def leaves_folder(file_name: str) -> bool:
    """Whether a file name reaches outside the image folder (absolute, or up through ..)."""
    path = PurePosixPath(forward_slashes(file_name))
    return path.is_absolute() or ".." in path.parts


def empty_set(entries: list[dict], images: list[dict], keep_empty: bool, named: str) -> str:
    """The start-up error for a file that leaves no image to read: it lists none, none of its
    entries has an id, or (`keep_empty` False) none has an annotation."""
    if not entries:
        what = "no images"
    elif not images:
        what = f"none of its {len(entries)} image entries has an id, an integer or a string"
    else:
        what = "no image with annotations"
        what += "" if keep_empty else "; keep_empty=false leaves out images without objects"
    return f"{named}: the data set is empty ({what})"


def unique_images(images: list[dict], skips) -> list[dict]:
    """The image entries with an id (COCO's integer, or a string: a file name, as some tools
    write), each id once: an entry without one (null, a float) or listed again is skipped,
    counted and logged (else it would train and be evaluated twice)."""
    kept, seen = [], set()
    for image in images:
        image_id = image.get("id")
        named = isinstance(image_id, str) and image_id != ""
        if not (named or (isinstance(image_id, int) and not isinstance(image_id, bool))):
            skips("image entries without an integer or string id skipped", repr(image_id))
        elif image_id in seen:
            skips("image entries listed twice skipped", image_id, image.get("file_name", ""))
        else:
            seen.add(image_id)
            kept.append(image)
    return kept
