"""Pascal VOC in its own layout: Annotations/*.xml, JPEGImages/, ImageSets/Main/<split>.txt
(or a lowercase annotations/ and images/), or split folders of images beside their xml files."""

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from frcnn.checks import check_flag, check_split, path_of, typed_setting
from frcnn.data.sources import (
    IMAGES_CHECKED,
    MapSource,
    check_image_sizes,
    check_images_exist,
    object_flag,
    other_layout,
    read_text,
)
from frcnn.data.transforms import Record, Transform, recorded_size
from frcnn.structures import counted

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip


def read_annotation(path: Path) -> tuple[str, list[tuple[str, list[float], bool]], tuple | None]:
    """A VOC xml -> (image file name, [(class name, [x0, y0, x1, y1], difficult), ...], the
    (width, height) it records or None).

    VOC's boxes are 1-based pixel indices, `xmax`/`ymax` inclusive: as torchvision and
    Detectron2 read them, xmin and ymin move by -1 to give pixel edges."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{path} is not valid XML ({err})") from None
    objects = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{path}: an object without a bndbox")
        x0, y0, x1, y1 = (coordinate(box, tag) for tag in COORDINATES)
        difficult = flag(obj.findtext("difficult"), path)
        objects.append(((obj.findtext("name") or "").strip(), [x0 - 1, y0 - 1, x1, y1], difficult))
    size = recorded_size(root.findtext("size/width"), root.findtext("size/height"))
    return (root.findtext("filename") or f"{path.stem}.jpg").strip(), objects, size


def flag(text: str | None, path: Path) -> bool:
    """An object's `<difficult>`: 0 or 1 as VOC writes it, or false / true (any case); left
    out, 0. Another value stops the start-up: read as 0, a hard object would train silently."""
    try:
        return object_flag((text or "").strip() or None)  # (an empty tag: 0, as none)
    except ValueError:
        raise ValueError(f"{path}: <difficult>{text}</difficult> is neither 0 nor 1") from None


COORDINATES = ("xmin", "ymin", "xmax", "ymax")  # a bndbox's


def coordinate(box: ET.Element, tag: str) -> float:
    """A bndbox's `tag` (xmin, ...) in pixels; NaN where it is left out or no number (`48,5`):
    the box is malformed, dropped and counted when read (`check_boxes`: unless most are)."""
    try:
        return float(box.findtext(tag))
    except (TypeError, ValueError):
        return float("nan")


def check_boxes(boxes: int, malformed: int, first: Path | None, where: str) -> None:
    """Stop at start-up where most of a split's `boxes` are `malformed` (a coordinate left out
    or no number: a tool or a locale that writes them otherwise), showing the first such
    object's bndbox in the xml file `first`; a few are dropped and counted as they are read."""
    if malformed <= boxes / 2:
        return
    bndbox = next(
        box
        for box in ET.parse(first).getroot().iter("bndbox")
        if any(np.isnan(coordinate(box, tag)) for tag in COORDINATES)
    )
    shown = " ".join(ET.tostring(bndbox, encoding="unicode").split())
    raise ValueError(
        f"{where}: {malformed} of its {boxes} boxes have a coordinate that is left out or no "
        f"number (e.g. {first}: {shown}): a bndbox holds xmin, ymin, xmax and ymax in pixels, "
        "as 48 or 48.5"
    )


def outside(objects: list, size: tuple[int, int] | None) -> list[int]:
    """The objects (their indices) whose box, read (`read_annotation`), is inverted or reaches
    past the image size the xml records by more than a pixel: boxes of another format (x, y,
    width, height in xmin..ymax). A box with a coordinate that is no number is not among them."""
    boxes = np.array([box for _, box, _ in objects], np.float64).reshape(-1, 4)
    wrong = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]) | (boxes[:, :2] < -1).any(1)
    if size:
        wrong |= (boxes[:, 2] > size[0] + 1) | (boxes[:, 3] > size[1] + 1)
    return np.flatnonzero(wrong).tolist()  # (NaN compares False: not wrong)


def check_box_format(boxes: int, wrong: int, first: tuple[Path, int] | None, where: str) -> None:
    """Stop at start-up where more than a fifth of a split's `boxes` are `wrong` (`outside`), as a
    COCO json's check does, showing the first one (`first`: its xml file and object index): they
    would train on the wrong geometry, or be dropped, silently."""
    if wrong <= boxes / 5:
        return
    xml, index = first
    bndbox = list(ET.parse(xml).getroot().iter("bndbox"))[index]
    shown = " ".join(ET.tostring(bndbox, encoding="unicode").split())
    raise ValueError(
        f"{where}: {wrong} of its {boxes} boxes are inverted or reach past the image size their "
        f"xml records (e.g. {xml}: {shown}): a bndbox holds xmin, ymin, xmax and ymax in "
        "pixels; are they x, y, width and height?"
    )


def unlisted_names(root: Path, split: str, unknown: dict, given: list | None, samples: list) -> str:
    """The start-up error for object names outside the class list: every one with its count
    and first xml, and the whole list to give (the given one and them, or the split's names
    where VOC's 20 are the list by default)."""
    found = ", ".join(
        f"{name} ({counted(count, 'object')}, first in {first})"
        for name, (count, first) in sorted(unknown.items())
    )
    if given:
        names, where = [*given, *sorted(unknown)], "add them"
    else:
        names = sorted({name for _, objects, _ in samples for name, _, _ in objects})
        where = (
            "data.class_names is VOC's 20 classes unless given: for a set of your own, give "
            "its names, in the order of their labels 1..C"
        )
    return (
        f"data.root={str(root)!r}: the {split} split has {counted(len(unknown), 'object name')} "
        f"that data.class_names does not list: {found}. {where}, e.g. "
        f"{typed_setting('data.class_names', names)}"
    )


# VOC's folders, and the lowercase ones of the sets that Kaggle holds in VOC's xml
# (annotations/*.xml beside images/*.png: face-mask-detection, car-plate-detection)
ANNOTATION_FOLDERS = ("Annotations", "annotations")
IMAGE_FOLDERS = ("JPEGImages", "images")


def first_folder(root: Path, names: tuple[str, ...]) -> Path:
    """`root/<name>` for the first of `names` that is a folder there, else the first's."""
    return next((root / name for name in names if (root / name).is_dir()), root / names[0])


def split_files(root: Path, split: str) -> tuple[list[str], Path, Path]:
    """A split's (image ids, annotation folder, image folder): VOC's layout (the ids listed in
    ImageSets/Main/<split>.txt, Annotations/<id>.xml, JPEGImages/; or a lowercase
    annotations/ and images/; `all`: every xml file there, or in `root` itself beside its
    images (LabelImg's folder), where no list is so named), else a folder `root/<split>` of
    images with their xml files beside them (Roboflow's Pascal VOC export: train, valid,
    test), its ids the xml files' names."""
    ids_file = root / "ImageSets" / "Main" / f"{split}.txt"
    annotations, images = (first_folder(root, n) for n in (ANNOTATION_FOLDERS, IMAGE_FOLDERS))
    if ids_file.is_file():
        return read_text(ids_file).split(), annotations, images
    if split == "all":  # every xml file (data.val_fraction holds some out): VOC's, else root's
        for xml_folder, image_folder in ((annotations, images), (root, root)):
            if any(xml_folder.glob("*.xml")):
                return sorted(p.stem for p in xml_folder.glob("*.xml")), xml_folder, image_folder
    folder = root / split
    if folder.is_dir() and any(folder.glob("*.xml")):
        return sorted(p.stem for p in folder.glob("*.xml")), folder, folder
    lists = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt"))
    folders = sorted(
        p.name for p in root.glob("*/") if p.name not in ANNOTATION_FOLDERS and any(p.glob("*.xml"))
    )
    if lists or folders:  # a VOC folder, without that split
        raise FileNotFoundError(
            f"split={split!r}: no {ids_file} nor a folder {folder} of xml files (it has "
            f"{lists[:8] if lists else folders[:8]})"
        )
    if any(annotations.glob("*.xml")):  # VOC's layout, no split listed
        raise FileNotFoundError(
            f"root={str(root)!r}: its xml files are in {annotations.name}/, but no "
            f"ImageSets/Main/{split}.txt lists the {split} split: write each split's ids (its "
            "xml files' names without .xml), one a line, in ImageSets/Main/<split>.txt "
            f"(train.txt, val.txt: other images in each), its images in {images.name}/; or "
            "train on all of them, a share held out for validation: data.train.split=all "
            "data.val_fraction=0.1"
        )
    if any(root.glob("*.xml")):
        raise FileNotFoundError(
            f"root={str(root)!r}: its xml files lie in it, in no split: list each split's ids "
            "in ImageSets/Main/<split>.txt (xml files in Annotations/, images in "
            "JPEGImages/), or put each split's images and xml files in a folder of its own "
            "(train/, val/), or train on all of them, a share held out for validation: "
            "data.train.split=all data.val_fraction=0.1"
        )
    # a folder above VOC's (VOCdevkit, or torchvision's root that holds it): name those below
    below = [str(p.parent.parent) for p in sorted(root.glob("*/ImageSets/Main"))]
    below = below or [str(p.parent.parent) for p in sorted(root.glob("*/*/ImageSets/Main"))]
    where = ", ".join(map(repr, below))
    hint = f" (VOC's layout is in {where}: give it as data.root)" if below else other_layout(root)
    raise FileNotFoundError(f"root={str(root)!r}: no {ids_file}, nor a folder {folder}{hint}")


class VOCFolder(MapSource):
    """One split (`ImageSets/Main/<split>.txt`: train, val, trainval, test) of a VOC2007 /
    VOC2012-style folder `root`, or the folder `root/<split>` of images and their xml files
    (Roboflow's Pascal VOC export: train, valid, test); `all`: every xml file (`split_files`).

    Labels 1..C follow `class_names` (by default VOC's 20); object names outside them stop
    the run at start-up, named with the list to give. `difficult` objects are what COCO's
    crowd regions are: not trained on, and ignored by the evaluation (neither a hit nor a
    miss), as VOC's own protocol does (by COCO's crowd rule: a detection inside one is ignored,
    where VOC's code asks IoU 0.5). A box with a coordinate left out or no number is dropped
    and counted (`check_boxes`). `keep_empty` False leaves out images without objects."""

    def __init__(
        self,
        transform: Transform,
        root: str,
        split: str = "train",
        class_names: list[str] | None = None,
        keep_empty: bool = True,
    ):
        check_flag("keep_empty", keep_empty)
        check_split("split", split)
        root = path_of("root", root)
        ids, annotations, self.image_dir = split_files(root, split)
        self.class_names = list(class_names or VOC_CLASSES)
        self.category_ids = list(range(1, len(self.class_names) + 1))
        super().__init__(transform, len(self.class_names), name=f"voc {root}, split {split}")
        label_of = {name: i + 1 for i, name in enumerate(self.class_names)}
        self.samples, unknown = [], {}  # an unlisted name -> (objects, first xml)
        boxes = malformed = wrong = 0
        first_malformed = first_wrong = None  # the first xml file with such a box
        for image_id in ids:
            xml = annotations / f"{image_id}.xml"
            file_name, objects, size = read_annotation(xml)
            bad = sum(bool(np.isnan(box).any()) for _, box, _ in objects)
            boxes, malformed = boxes + len(objects), malformed + bad
            first_malformed = first_malformed or (xml if bad else None)
            faults = outside(objects, size)
            wrong += len(faults)
            first_wrong = first_wrong or ((xml, faults[0]) if faults else None)
            for name in (name for name, _, _ in objects if name not in label_of):
                count, first = unknown.get(name, (0, f"{image_id}.xml"))
                unknown[name] = (count + 1, first)
            if (self.image_dir / f"{image_id}.jpg").is_file():
                # VOC's own layout, as torchvision and Detectron2 read it (a `filename` written
                # before the files were renamed to ids would miss); else the xml's (a .png)
                file_name = f"{image_id}.jpg"
            if objects or keep_empty:
                self.samples.append((file_name, objects, size))
        if unknown:
            raise ValueError(unlisted_names(root, split, unknown, class_names, self.samples))
        if not self.samples:
            raise ValueError(f"data.root={str(root)!r}: the {split} split has no images")
        check_boxes(boxes, malformed, first_malformed, f"data.root={str(root)!r} ({split})")
        check_box_format(boxes, wrong, first_wrong, f"data.root={str(root)!r} ({split})")
        check_images_exist(
            [self.image_dir / name for name, _, _ in self.samples[:IMAGES_CHECKED]],
            f"data.root={str(root)!r} ({split})",
            f"its images are {self.image_dir.name}/<id>.jpg, or the file its xml's filename "
            "names there",
        )
        check_image_sizes(
            [(self.image_dir / name, size) for name, _, size in self.samples[:IMAGES_CHECKED]],
            f"data.root={str(root)!r} ({split})",
        )
        self.label_of = label_of

    def __len__(self) -> int:
        return len(self.samples)

    def describe(self, index: int) -> str:
        return self.samples[index][0]

    def image_file(self, index: int) -> Path:
        return self.image_dir / self.samples[index][0]

    def boxes_per_class(self) -> np.ndarray:
        trained = np.concatenate([self.labels(i) for i in range(len(self))])
        return np.bincount(trained, minlength=self.num_classes + 1)[1:]

    def labels(self, index: int) -> np.ndarray:
        objects = self.samples[index][1]  # (a malformed box, NaN, is dropped: not trained on)
        trained = [name for name, box, hard in objects if not hard and np.isfinite(box).all()]
        return np.array([self.label_of[name] for name in trained], np.int64)

    def record(self, index: int) -> Record:
        file_name, objects, size = self.samples[index]
        boxes = np.array([box for _, box, _ in objects], np.float32).reshape(-1, 4)
        labels = np.array([self.label_of[name] for name, _, _ in objects], np.int64)
        difficult = np.array([hard for _, _, hard in objects], bool)
        image = (self.image_dir / file_name).read_bytes()
        return Record(image, boxes, labels, index, difficult, size=size)
