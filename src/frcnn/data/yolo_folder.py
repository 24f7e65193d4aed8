"""A data set in the Ultralytics YOLO layout: data.yaml, images/<split>, labels/<split>/*.txt.

Read as Ultralytics reads it (`ultralytics.data.utils`): `data.yaml` names the split folders
(`train`, `val`: a folder of images, a text file listing images, or a list of those), relative
to its `path` (by default the folder `data.yaml` is in; Roboflow's `../train/images` resolves
inside it too) and the classes (`names`: a list, or a dict of class id -> name). Each image's
label file is found by replacing the last `images` folder of its path with `labels` and its
suffix with `.txt`. One line per object: `class cx cy w h`, normalised to 0..1, class ids from
0; a line of more values is a polygon (segmentation labels), whose bounding box is taken.
"""

import io
import logging
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from frcnn.checks import check_flag, check_split, path_of
from frcnn.data.sources import (
    IMAGES_CHECKED,
    MapSource,
    check_images_exist,
    forward_slashes,
    image_files,
    other_layout,
    read_text,
    relative_path,
)
from frcnn.data.transforms import Record, Transform, upright_size

log = logging.getLogger(__name__)


def read_data_yaml(root: str | Path) -> tuple[Path, dict]:
    """`root` (a folder holding data.yaml, or the yaml file) -> (the yaml's path, its content)."""
    root = path_of("root", root)
    file = root / "data.yaml" if root.is_dir() else root
    if not file.is_file():
        raise FileNotFoundError(f"data.root={str(root)!r}: no data.yaml{missing_yaml_hint(root)}")
    try:
        content = yaml.safe_load(read_text(file))
    except yaml.YAMLError as err:
        raise ValueError(f"data.root: {file} is not valid YAML ({err})") from None
    if not isinstance(content, dict) or not ({"names", "nc"} & set(content)):
        raise ValueError(f"data.root: {file} has no `names` (the class names) or `nc` key")
    return file, content


# the class list of YOLO's darknet layout, which Label Studio's and CVAT's YOLO exports write
# in place of a data.yaml
DARKNET_NAMES = ("classes.txt", "obj.names")


def missing_yaml_hint(root: Path) -> str:
    """What a folder without data.yaml holds that says what to give: another yaml, the
    darknet layout's class list (from which the data.yaml to write is shown, its splits the
    folders there: `splits_example`), one of the two folders above holding data.yaml
    (`images/` or `images/train` given), or another layout's data (`other_layout`)."""
    if not root.is_dir():
        return ""
    inside = sorted(p.name for p in root.glob("*.yaml"))
    if inside:
        return f" (it holds {', '.join(inside)}: give the file as data.root)"
    above = next((p for p in root.parents[:2] if (p / "data.yaml").is_file()), None)
    if above is not None:
        return f" (a folder above holds one: data.root={str(above)!r})"
    listed = next((root / name for name in DARKNET_NAMES if (root / name).is_file()), None)
    if listed is None:
        return other_layout(root)
    names = [line.strip() for line in read_text(listed).splitlines() if line.strip()]
    splits = splits_example(root)
    held = "" if "val:" in splits else "; with no validation split, data.val_fraction=0.1"
    return (
        f" (it holds {listed.name}, the class list of a YOLO export without one: write "
        "data.yaml beside it, naming each split's images (a folder, or a text file listing "
        f"them) and the classes in their order, e.g. {splits}, "
        f"names: {yaml.safe_dump(names, default_flow_style=True, allow_unicode=True).strip()}"
        f"{held})"
    )


def splits_example(root: Path) -> str:
    """data.yaml's splits for the image folders `root` holds: Ultralytics' or Roboflow's
    split folders, else one folder of them all (Label Studio's `images`, CVAT's
    `obj_train_data`), which data.val_fraction splits."""
    for train, val in (("images/train", "images/val"), ("train/images", "valid/images")):
        if (root / train).is_dir():
            return f"train: {train}" + (f", val: {val}" if (root / val).is_dir() else "")
    flat = next((name for name in ("images", "obj_train_data") if (root / name).is_dir()), None)
    return f"train: {flat}" if flat else "train: images/train, val: images/val"


def class_names(content: dict, file: Path) -> list[str]:
    """`names` as a list, or a dict of contiguous class ids 0..C-1 -> name; without `names`,
    `class_0` .. for the `nc` classes, as Ultralytics names them (which also refuses an `nc`
    that is not the number of `names`)."""
    count = content.get("nc")
    if count is not None and (not isinstance(count, int) or count < 1):
        raise ValueError(f"{file}: nc={count!r}: the number of classes, an integer >= 1")
    names = content.get("names") or [f"class_{i}" for i in range(count or 0)]
    if count is not None and len(names) != count:
        raise ValueError(
            f"{file}: nc={count}, but `names` has {len(names)} classes: they must match"
        )
    if isinstance(names, dict):  # its keys may be quoted ('0': person), as Ultralytics reads them
        names = {int(k) if str(k).isdigit() else k: name for k, name in names.items()}
        if set(names) != set(range(len(names))):
            raise ValueError(f"{file}: `names` must have the class ids 0..{len(names) - 1}")
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise ValueError(f"{file}: `names` must be a list or a dict of class names")
    return [str(name) for name in names]


def base_folder(content: dict, file: Path) -> Path:
    """The folder the splits are relative to: `path` (relative to data.yaml's folder), else
    data.yaml's folder."""
    path = content.get("path")
    if not path:
        return file.parent
    base = Path(path).expanduser()
    base = base if base.is_absolute() else file.parent / base
    if not base.is_dir():
        log.warning(
            "%s: path=%r is no folder here; the splits are read relative to %s", file, path,
            file.parent,
        )  # fmt: skip
        return file.parent
    return base


def split_images(content: dict, split: str, file: Path) -> tuple[list[Path], list[Path]]:
    """The image files of a split (`train`, `val`, `test`) as data.yaml names them (`val` may
    be called `validation`, as Ultralytics reads it), and the folders or list files they were
    found in (Roboflow's `../train/images` is read as `train/images` beside data.yaml)."""
    key = "validation" if split == "val" and not content.get("val") else split
    if not content.get(key):
        named = [k for k in ("train", "val", "validation", "test") if content.get(k)]
        raise FileNotFoundError(f"split={split!r}: {file} names no such split (it names {named})")
    base = base_folder(content, file)
    entries = content[key] if isinstance(content[key], list) else [content[key]]
    images, places = [], []
    for entry in map(forward_slashes, entries):
        path = Path(entry).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.exists() and entry.startswith("../"):  # Roboflow's export
            path = base / entry[3:]
        places.append(path)
        if path.is_dir():
            images += image_files(sorted(path.rglob("*")), f"{file} ({split}: {path})")
        elif path.is_file():  # a list of images, one a line, relative to the list's folder
            for line in read_text(path).splitlines():
                line = line.strip()
                if line:
                    listed = Path(forward_slashes(line).removeprefix("./"))
                    images.append(listed if listed.is_absolute() else path.parent / listed)
        else:
            raise FileNotFoundError(f"{file}: {key}={entry!r}: no such folder or file ({path})")
    return images, places


def label_file(image: Path) -> Path:
    """Ultralytics' rule: the last `images` folder of the path becomes `labels`, suffix .txt."""
    parts = list(image.parts)
    if "images" in parts[:-1]:
        index = len(parts) - 2 - parts[-2::-1].index("images")
        parts[index] = "labels"
    return Path(*parts).with_suffix(".txt")


def parse_labels(text: str) -> tuple[np.ndarray, np.ndarray, int]:
    """A label file's text -> (class ids (K,), normalised cxcywh boxes (K, 4), malformed lines).

    A line of more than 6 values is a polygon (class x1 y1 x2 y2 ...): its bounding box."""
    classes, boxes, bad = [], [], 0
    for line in text.splitlines():
        values = line.split()
        if not values:
            continue
        try:
            numbers = [float(v) for v in values]
        except ValueError:
            bad += 1
            continue
        cls, coords = numbers[0], numbers[1:]
        if len(coords) > 5 and len(coords) % 2 == 0:
            xy = np.array(coords).reshape(-1, 2)
            (x0, y0), (x1, y1) = xy.min(0), xy.max(0)
            coords = [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]
        if len(coords) != 4 or not cls.is_integer():  # (nan, inf: no class id)
            bad += 1
            continue
        classes.append(int(cls))
        boxes.append(coords)
    return np.array(classes, np.int64), np.array(boxes, np.float32).reshape(-1, 4), bad


def not_normalised(cxcywh: np.ndarray) -> np.ndarray:
    """(K, 4) cxcywh -> (K,) bool: a value outside 0..1 (a pixel box), Ultralytics' check. A box
    whose corners reach past the image (cx - w/2 < 0) is YOLO's all the same: clipped later."""
    return ((cxcywh < -1e-3) | (cxcywh > 1 + 1e-3)).any(1)


LABELS_CHECKED = 32  # label files read at start-up to catch a wrong format or class list


def reaches_past(cxcywh: np.ndarray, margin: float = 0.01) -> np.ndarray:
    """(K, 4) cxcywh -> (K,) bool: the box reaches past the image by more than `margin` of a
    side (an object the frame cuts, now and then; `x0 y0 x1 y1` read as YOLO's, mostly)."""
    half = cxcywh[:, 2:] / 2
    return ((cxcywh[:, :2] - half) < -margin).any(1) | ((cxcywh[:, :2] + half) > 1 + margin).any(1)


def check_labels(images: list[Path], num_classes: int, name: str) -> None:
    """Stop at start-up where most lines of the first label files are not YOLO's: malformed,
    not normalised to 0..1 (pixel boxes) or of a class id beyond `names` (another class
    list), where their class ids run 1..C, never 0 (counted from 1: each class would train as
    the next), or where most of their boxes reach past the image (corners, `x0 y0 x1 y1`,
    taken for centres and sides); a few such lines are dropped, or clipped, and counted as the
    run goes."""
    lines = bad = past = 0
    example = past_example = ""
    seen = set()  # the class ids of the lines
    for image in images:
        labels = label_file(image)
        if not labels.is_file():
            continue
        text = read_text(labels)
        classes, boxes, malformed = parse_labels(text)
        seen.update(classes.tolist())
        wrong = (classes >= num_classes) | (classes < 0) | not_normalised(boxes)
        lines, bad = lines + len(classes) + malformed, bad + int(wrong.sum()) + malformed
        beyond = reaches_past(boxes)
        past += int(beyond.sum())
        if (wrong.any() or malformed) and not example:
            example = f"{labels}: {text.strip().splitlines()[0]!r}"
        if beyond.any() and not past_example:
            past_example = f"{labels}: {text.strip().splitlines()[0]!r}"
    if seen and 0 not in seen and max(seen) == num_classes:
        raise ValueError(
            f"{name}: the label lines of its first {len(images)} images use class ids up to "
            f"{num_classes} and never 0, with {num_classes} names in data.yaml (class ids "
            f"0..{num_classes - 1}): are they counted from 1? YOLO's class ids count from 0, "
            "names[0] being class 0: each class would train as the next"
        )
    if lines and bad > lines / 2:
        raise ValueError(
            f"{name}: {bad} of the {lines} label lines of its first {len(images)} images are not "
            f"`class cx cy w h` with a class id below {num_classes} (data.yaml's names) and "
            f"coordinates normalised to 0..1 (e.g. {example}): are the labels in pixels, or "
            "for another class list?"
        )
    if lines and past > lines / 2:
        raise ValueError(
            f"{name}: {past} of the {lines} label lines of its first {len(images)} images "
            f"reach past the image as `class cx cy w h` (e.g. {past_example}): are they "
            "`class x0 y0 x1 y1`? YOLO's labels give the box's centre, width and height"
        )


def check_label_files_exist(images: list[Path], name: str) -> None:
    """Stop at start-up where none of a split's images has a label file where Ultralytics'
    rule (`label_file`) looks: every image would train as one without objects, silently (a
    layout such as `train/img/` beside `train/lbl/`). A file of the first image's name and
    suffix .txt in the folder above the image's is named."""
    if any(label_file(image).is_file() for image in images):
        return
    image = images[0]
    found = next(image.parent.parent.rglob(f"{image.stem}.txt"), None)
    raise FileNotFoundError(
        f"{name}: none of its {len(images)} images has a label file where YOLO's layout puts "
        f"it (the last `images` folder of the image's path becomes `labels`, its suffix .txt: "
        f"{image} -> {label_file(image)})"
        + (
            f"; {found} has the first one's name: put the images in a folder `images` and the "
            "labels in a folder `labels` beside it (images/train, labels/train)"
            if found
            else ""
        )
    )


def has_objects(image: Path) -> bool:
    """Whether an image's label file holds at least one well-formed line."""
    labels = label_file(image)
    return labels.is_file() and parse_labels(read_text(labels))[0].size > 0


class YOLOFolder(MapSource):
    """One split of a YOLO data set (`root`: the folder holding data.yaml, or the yaml file).

    Labels are 1 + the YOLO class id; an image without a label file has no objects; a malformed
    line, a class id out of range or a box whose values are not normalised (> 1: pixels) is
    dropped, counted and logged; a box reaching past the image's border is clipped to it.
    `keep_empty` False leaves out the images without objects (read once, at start-up)."""

    def __init__(
        self, transform: Transform, root: str, split: str = "train", keep_empty: bool = True
    ):
        check_flag("keep_empty", keep_empty)
        check_split("split", split)
        file, content = read_data_yaml(root)
        self.class_names = class_names(content, file)
        self.category_ids = list(range(len(self.class_names)))  # YOLO's own class ids
        self.images, places = split_images(content, split, file)
        read = ", ".join(relative_path(place, file.parent) for place in places)
        name = f"yolo {file}, split {split}: {read}"
        super().__init__(transform, len(self.class_names), name=name)
        if not self.images:
            raise ValueError(f"data.root={str(root)!r}: the {split} split has no images")
        check_images_exist(
            self.images[:IMAGES_CHECKED], f"{file} ({split})",
            f"is `{split}` in data.yaml the images' folder, or a list of them relative to its "
            "own folder?",
        )  # fmt: skip
        check_label_files_exist(self.images, f"{file} ({split})")
        if not keep_empty:
            self.images = [path for path in self.images if has_objects(path)]
            if not self.images:
                raise ValueError(
                    f"data.root={str(root)!r}: the {split} split has no image with objects "
                    "(keep_empty=false leaves out those without)"
                )
        check_labels(self.images[:LABELS_CHECKED], self.num_classes, f"{file} ({split})")

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, index: int) -> str:
        return str(self.images[index])

    def image_file(self, index: int) -> Path:
        return self.images[index]

    def labels(self, index: int) -> np.ndarray:
        labels_path = label_file(self.images[index])
        classes = parse_labels(read_text(labels_path))[0] if labels_path.is_file() else []
        return np.array([c + 1 for c in classes if 0 <= c < self.num_classes], np.int64)

    def record(self, index: int) -> Record:
        path, name = self.images[index], self.describe(index)  # (how the skips' logs name it)
        data = path.read_bytes()
        labels_path = label_file(path)
        text = read_text(labels_path) if labels_path.is_file() else ""
        classes, cxcywh, bad = parse_labels(text)
        if bad:
            self.skips("malformed label lines dropped", name, f"{bad} in {labels_path}")
        # a line written twice is one object (as Ultralytics reads it): two boxes would train
        # it twice and leave one of them a miss in the mAP, whatever the detector does
        _, first = np.unique(np.column_stack([classes, cxcywh]), axis=0, return_index=True)
        if len(first) < len(classes):
            repeats = f"{len(classes) - len(first)} in {labels_path}"
            self.skips("repeated label lines dropped", name, repeats)
            keep = np.sort(first)  # the file's order
            classes, cxcywh = classes[keep], cxcywh[keep]
        outside = not_normalised(cxcywh)
        if outside.any():
            outside_count = f"{int(outside.sum())} in {labels_path}"
            self.skips("boxes not normalised to 0..1 dropped", name, outside_count)
        with Image.open(io.BytesIO(data)) as image:  # the header only: its upright size
            width, height = upright_size(image)
        scale = np.array([width, height, width, height], np.float32)
        half = cxcywh[:, 2:] / 2
        boxes = np.concatenate([cxcywh[:, :2] - half, cxcywh[:, :2] + half], 1) * scale
        # a class id out of range is a label outside 1..C: dropped and counted downstream
        return Record(data, boxes[~outside], (classes + 1)[~outside], index)
