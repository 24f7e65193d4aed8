"""Where a Hugging Face detection data set keeps its boxes and classes, and in which format.

Hub data sets spell the same things differently: `objects{bbox, category}` (detection-datasets,
cppe-5 and the RF100 `Francesco/*` sets), top-level `bboxes` / `categories`, `category_id` or
`label`; and their boxes are xyxy (detection-datasets/coco, fashionpedia), xywh (cppe-5, RF100)
or cxcywh, in pixels or normalised. `read_schema` finds the columns from the data set's
`Features`; `decide_box_format` reads the format from the first rows where only one reading
fits them all, and otherwise refuses: a wrong guess would drop most boxes as malformed and
train the rest on the wrong geometry, silently.
"""

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from frcnn.checks import typed_setting
from frcnn.data.sources import object_flag
from frcnn.data.transforms import id_number, recorded_size, upright_size
from frcnn.structures import counted

BOX_FORMATS = ("xyxy", "xywh", "cxcywh")
OBJECT_COLUMNS = ("objects", "annotations", "annotation")
BOX_FIELDS = ("bbox", "bboxes", "boxes", "box")
CATEGORY_FIELDS = ("category", "category_id", "categories", "label", "labels", "class", "classes")
ID_COLUMNS = ("image_id", "id")
CROWD_FIELDS = ("iscrowd", "is_crowd")
# a box may reach this far (pixels, or this share of a side when normalised) outside its image
TOLERANCE = 1.0


@dataclass(frozen=True)
class Schema:
    """The columns of a detection data set: `image` (an Image feature), `image_id` (None: the
    set has no id column, see `row_id`), the `objects` column holding `bbox` and `category`
    (None: they are top-level columns), the class names (the category's ClassLabel), the
    `width` / `height` columns and the objects' `iscrowd` field (COCO's crowd flag) if any."""

    image: str
    image_id: str | None
    objects: str | None
    bbox: str
    category: str
    class_names: list[str]
    width: str | None = None
    height: str | None = None
    # a category that holds class names (strings): name -> index in class_names; else None
    category_index: dict[str, int] | None = None
    iscrowd: str | None = None


def inner(feature):
    """The feature of a list's items (datasets' `List` / `Sequence`), or the feature itself."""
    return getattr(feature, "feature", feature)


def read_schema(features, name: str, class_names: list[str] | None = None) -> Schema:
    """The schema of a data set with `features` (a `datasets.Features`); `name` says which set
    in the errors. The class names are the category's ClassLabel's; `class_names` (the
    config's `data.class_names`) names the values 0..C-1 of a plain integer category."""
    from datasets import Image as ImageFeature

    columns = dict(features)
    image = next((c for c, f in columns.items() if isinstance(f, ImageFeature)), None)
    if image is None:
        raise ValueError(f"{name}: no image column (a datasets Image feature) in {list(columns)}")
    image_id = next((c for c in ID_COLUMNS if id_feature(columns.get(c))), None)
    objects, fields = None, columns
    for column in OBJECT_COLUMNS:
        feature = inner(columns.get(column))
        if isinstance(feature, dict):
            objects, fields = column, {k: inner(v) for k, v in feature.items()}
            break
    bbox = next((f for f in BOX_FIELDS if f in fields), None)
    category = next((f for f in CATEGORY_FIELDS if f in fields), None)
    where = f"{objects}." if objects else ""
    if bbox is None or category is None:
        raise ValueError(
            f"{name}: found no boxes and categories ({where or 'top-level '}fields "
            f"{sorted(fields)}; looked for {'/'.join(BOX_FIELDS)} and "
            f"{'/'.join(CATEGORY_FIELDS)}): is it a detection data set?"
        )
    label = inner(fields[category])
    class_names = category_class_names(label, class_names, name, f"{where}{category}")
    return Schema(
        image, image_id, objects, bbox, category, class_names,
        "width" if "width" in columns else None, "height" if "height" in columns else None,
        {str(n): i for i, n in enumerate(class_names)} if holds_names(label) else None,
        next((f for f in CROWD_FIELDS if flag_feature(fields.get(f))), None),
    )  # fmt: skip


def field_path(schema: Schema, field: str) -> str:
    """Where a field of the objects is, as messages name it: `objects.bbox`, or `bbox` for a
    top-level column."""
    return f"{schema.objects}.{field}" if schema.objects else field


def id_feature(feature) -> bool:
    """Whether `feature` can be an image id column: an integer or a string (Open Images' ids,
    file names); another (a float, a list) is no id, and the rows are told apart as a set
    without one is (`row_id`)."""
    from datasets import Value

    return isinstance(feature, Value) and feature.dtype.startswith(("int", "uint", "string"))


def flag_feature(feature) -> bool:
    """Whether `feature` can be a per-object flag (COCO's `iscrowd`): a bool, an integer or a
    string ("0" / "1", read by `object_flag`; a set that stores them so would train its crowd
    regions as objects)."""
    from datasets import Value

    kinds = ("bool", "int", "uint", "string", "large_string")
    return isinstance(feature, Value) and feature.dtype.startswith(kinds)


def holds_names(label) -> bool:
    """Whether the category feature `label` holds class names (strings)."""
    from datasets import Value

    return isinstance(label, Value) and label.dtype in ("string", "large_string")


def category_class_names(label, class_names: list[str] | None, name: str, field: str) -> list:
    """The class names of the category feature `label` (the field `field` of the set `name`): a
    ClassLabel's own (`class_names`, where given, must be they); a plain integer category (class
    indices) or one of strings (class names) is named by `class_names` (`data.class_names`),
    which it needs."""
    from datasets import ClassLabel, Value

    named = holds_names(label)
    index = isinstance(label, Value) and label.dtype.startswith(("int", "uint"))
    if isinstance(label, ClassLabel):
        if class_names is not None and list(class_names) != list(label.names):
            raise ValueError(
                f"data.class_names: {name} names its classes itself ({', '.join(label.names)}): "
                "leave data.class_names out"
            )
        return list(label.names)
    if not (named or index):
        raise ValueError(f"{name}: {field} is {label}, not a class index or name")
    # without them: [], which the source refuses once it has read its first rows (`names_to_give`)
    return list(class_names or [])


def names_to_give(rows: list[dict], schema: Schema, name: str) -> str:
    """The refusal of a category without class names (plain integers, or strings) where
    `data.class_names` is not given: what the first `rows` hold, and the list to give."""
    field = field_path(schema, schema.category)
    held = held_categories(rows, schema)
    if schema.category_index is None:  # class indices
        values = sorted({int(c) for c in held})
        found = f"its first {counted(len(rows), 'row')} hold the values {values[:20]}"
        return (
            f"data.class_names: {name}'s {field} is a plain integer, not a ClassLabel, so the "
            "data set does not name its classes: give them, the name of value 0 first, e.g. "
            f"data.class_names=[helmet,head] (its card lists them; {found})"
        )
    seen = sorted({str(c) for c in held})
    found = f"its first {counted(len(rows), 'row')} name {', '.join(seen[:20])}" + (
        ", ..." if len(seen) > 20 else ""
    )
    return (
        f"data.class_names: {name}'s {field} holds class names (strings), whose full list its "
        f"rows cannot tell: give it, in the order of the labels you want ({found}), e.g. "
        f"{typed_setting('data.class_names', seen or ['helmet', 'head'])}"
    )


def held_categories(rows: list[dict], schema: Schema) -> list:
    """The categories of every object of `rows`, as stored."""
    return [category for row in rows for category in row_fields(row, schema)[1]]


def row_fields(example: dict, schema: Schema) -> tuple[list, list, list | None]:
    """A row's boxes, categories and crowd flags (None: the set has none) as stored."""
    objects = example[schema.objects] if schema.objects else example
    keys = (schema.bbox, schema.category, schema.iscrowd)
    if isinstance(objects, list):  # a list of per-object dicts (datasets' List of a dict)
        return tuple([o[k] for o in objects] if k else None for k in keys)
    return tuple(objects[k] if k else None for k in keys)  # a dict of per-field lists


def row_objects(example: dict, schema: Schema) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A row's raw boxes (K, 4), as stored, class indices (K,) into the class names (a name
    they do not list: -1, dropped and counted as a label out of range) and crowd flags (K,)
    (all False where the set has none). Boxes of other than 4 values are refused."""
    boxes, classes, crowds = row_fields(example, schema)
    if schema.category_index is not None:
        classes = [schema.category_index.get(str(c), -1) for c in classes]
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    if crowds is None:
        crowds = np.zeros(len(classes), bool)
    else:
        try:
            crowds = np.array([object_flag(flag) for flag in crowds], bool)
        except ValueError as err:
            raise ValueError(
                f"its {field_path(schema, schema.iscrowd)}: {err}: a crowd flag is 0 (an "
                "object) or 1 (a crowd region)"
            ) from None
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.size and (boxes.ndim != 2 or boxes.shape[1] != 4):
        raise ValueError(
            f"its {field_path(schema, schema.bbox)} holds boxes of {boxes.shape[-1]} values, "
            "not 4: rotated boxes or polygons? The detector takes axis-aligned boxes of 4 numbers"
        )
    return boxes.reshape(-1, 4), classes, crowds.reshape(-1)


def check_categories(rows: list[dict], schema: Schema, name: str) -> None:
    """The categories of a data set's first rows, which `data.class_names` names: its names
    (a category of strings) must all be listed, else every object of a name left out would be
    dropped; its values (a plain integer) must lie in 0..C-1, else a value beyond would be
    dropped and values counted from 1 would train every class as the next one."""
    if schema.category_index is not None:
        seen = {str(c) for c in held_categories(rows, schema)}
        unknown = sorted(seen - set(schema.category_index))
        if unknown:
            raise ValueError(
                f"data.class_names does not list {unknown[:10]}, which {name}'s first rows "
                "hold: add them"
            )
        return
    values = np.concatenate([row_objects(row, schema)[1] for row in rows])
    outside = values[(values < 0) | (values >= len(schema.class_names))]
    if len(outside):
        count = len(schema.class_names)
        raise ValueError(
            f"data.class_names names {count} classes, the category values 0..{count - 1}, "
            f"but {name}'s first rows hold the value {int(outside[0])}: list a name for every "
            "value, value 0 first (for values counted from 1, a name for 0 as well)"
        )


def row_size(example: dict, schema: Schema) -> tuple[int, int] | None:
    """(width, height) a row's columns record for its image, if it has them."""
    if not (schema.width and schema.height):
        return None
    return recorded_size(example.get(schema.width), example.get(schema.height))


def row_image(example: dict, schema: Schema) -> bytes:
    """A row's encoded image: its bytes, or the file its path names where the set stores none
    (an image folder with a metadata.jsonl, the hub's layout for sets uploaded as files: a
    local path, or `hf://` read as `datasets` reads it, retried)."""
    from datasets.utils.file_utils import xopen

    image = example[schema.image]
    if not image or (image.get("bytes") is None and not image.get("path")):
        raise ValueError("the row has no image bytes or path")
    if image.get("bytes") is not None:
        return image["bytes"]
    with xopen(image["path"], "rb") as file:
        return file.read()


def row_id(example: dict, schema: Schema) -> int:
    """A row's image id: its id column's integer, or the `id_number` of its string; else (a set
    without one, as an image folder with a metadata.jsonl) the `id_number` of its image's path
    and bytes, whichever it holds (a set pushed from such a folder keeps only the files' base
    names, which may repeat)."""
    if schema.image_id:
        value = example[schema.image_id]
        return id_number(value) if isinstance(value, str) else int(value)
    image = example[schema.image] or {}
    key = (image.get("path") or "").encode() + (image.get("bytes") or b"")
    if not key:
        raise ValueError("the row has no image bytes or path")
    return id_number(key)


def image_size(example: dict, schema: Schema, data: bytes | None = None) -> tuple[int, int]:
    """(width, height) of a row's image: its columns, else the upright image's header (of
    `data`, its encoded image, where already read)."""
    recorded = row_size(example, schema)
    if recorded:
        return recorded
    with Image.open(io.BytesIO(data or row_image(example, schema))) as opened:
        return upright_size(opened)


def to_xyxy(boxes: np.ndarray, box_format: str, normalized: bool, size) -> np.ndarray:
    """Raw boxes (K, 4) in `box_format` -> xyxy in pixels of an image of `size` (w, h)."""
    if box_format == "xywh":
        boxes = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1)
    elif box_format == "cxcywh":
        half = boxes[:, 2:] / 2
        boxes = np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], 1)
    if normalized:
        width, height = size
        boxes = boxes * np.array([width, height, width, height], np.float32)
    return boxes


def fits(boxes: np.ndarray, size) -> np.ndarray:
    """(K,) whether each xyxy pixel box has a positive size and lies within its image."""
    width, height = size
    positive = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    inside = (boxes[:, :2] >= -TOLERANCE).all(1)
    inside &= (boxes[:, 2] <= width + TOLERANCE) & (boxes[:, 3] <= height + TOLERANCE)
    return positive & inside


def decide_box_format(
    rows: list[tuple[np.ndarray, tuple[int, int]]],
    box_format: str | None,
    normalized: bool | None,
    name: str,
) -> tuple[str, bool, str]:
    """(box format, normalised, how it was decided) for the data set whose first rows give
    `rows` [(raw boxes (K, 4), image size (w, h))]: the settings where given, else the only
    reading under which every box fits its image. None or several: an error naming the
    settings (`data.box_format`, `data.normalized`)."""
    if box_format is not None and box_format not in BOX_FORMATS:
        raise ValueError(f"data.box_format={box_format!r}: one of {', '.join(BOX_FORMATS)}")
    boxes = [b for b, _ in rows if len(b)]
    if not boxes:
        if box_format is None or normalized is None:
            raise ValueError(
                f"{name}: its first {len(rows)} rows hold no boxes to read the format from: "
                "set data.box_format (xyxy, xywh or cxcywh) and data.normalized (true, false)"
            )
        return box_format, normalized, "as set"
    given = normalized
    if normalized is None:  # pixel boxes of at most 1 px are no boxes: 0..1 is normalised
        normalized = bool(max(float(b.max()) for b in boxes) <= 1.0)
    count = sum(len(b) for b in boxes)
    misfits = {
        f: sum(int((~fits(to_xyxy(b, f, normalized, size), size)).sum()) for b, size in rows)
        for f in BOX_FORMATS
    }
    fitting = [f for f, n in misfits.items() if n == 0]
    unit = "normalised" if normalized else "pixels"
    if box_format and misfits[box_format] > count / 2:  # a wrong setting: most boxes dropped
        raise ValueError(
            f"{name}: data.box_format={box_format} ({unit}) leaves {misfits[box_format]} of "
            f"the {count} boxes of its first {len(rows)} rows inverted or outside their image "
            f"(e.g. {boxes[0][0].tolist()}); "
            + (f"as {' or '.join(fitting)} all fit" if fitting else "no format fits them all")
            + ": set data.box_format (and data.normalized) to what the data holds"
        )
    if box_format:
        return box_format, normalized, f"data.box_format={box_format}, {unit}"
    if len(fitting) == 1:
        others = ", ".join(f"{f}: {misfits[f]} of {count} boxes would not fit" for f in misfits)
        return fitting[0], normalized, f"read from its first {len(rows)} rows ({others})"
    found = ", ".join(f"{f}: {n} of {count}" for f, n in misfits.items())
    why = f"as {' and as '.join(fitting)} every box fits" if fitting else "no reading fits all"
    if not fitting and given is not None:
        why += f", is data.normalized={str(given).lower()} right?"
    raise ValueError(
        f"{name}: the box format cannot be told from its first {len(rows)} rows ({unit}; boxes "
        f"that would not fit their image as {found}: {why}). Set data.box_format "
        "(xyxy: x_min, y_min, x_max, y_max; xywh: x_min, y_min, width, height; cxcywh: centre, "
        "width, height) and, if need be, data.normalized"
    )
