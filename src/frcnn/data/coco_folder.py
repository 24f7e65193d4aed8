"""COCO in its official layout: annotations/instances_*.json and an image folder."""

import json
from pathlib import Path, PurePosixPath

import numpy as np

from frcnn.data.sources import MapSource
from frcnn.data.transforms import Record, Transform

# far more than a real image holds: the rest are dropped, counted (a file's runaway copy)
MAX_ANNOTATIONS_PER_IMAGE = 10_000


class COCOFolder(MapSource):
    """Images and boxes of one COCO annotation file.

    COCO category ids (1..90 with gaps) map to contiguous labels 1..C in id order; crowd
    annotations are not training targets but travel as `crowd_boxes` for the evaluation to
    ignore, and every annotation's `area` goes with it (COCO's small / medium / large ranges
    are those of the mask area); images without annotations are kept unless `keep_empty` is
    False (an image with only crowds counts as empty).
    """

    def __init__(
        self,
        transform: Transform,
        annotation_file: str,
        image_dir: str,
        keep_empty: bool = True,
    ):
        annotation_file, image_dir = Path(annotation_file), Path(image_dir)
        if not annotation_file.is_file():
            raise FileNotFoundError(f"data annotation_file={str(annotation_file)!r}: no such file")
        if not image_dir.is_dir():
            raise FileNotFoundError(f"data image_dir={str(image_dir)!r}: no such folder")
        named = f"data annotation_file={str(annotation_file)!r}"
        try:
            coco = json.loads(annotation_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{named} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno} "
                "(a truncated download?)"
            ) from None
        except RecursionError:
            raise ValueError(f"{named} nests its JSON too deep to read") from None
        category_ids = checked_category_ids(coco.get("categories") or [], named)
        self.label_of = {cid: i + 1 for i, cid in enumerate(category_ids)}
        names = {c["id"]: c["name"] for c in coco["categories"]}
        self.class_names = [names[cid] for cid in category_ids]
        self.category_ids = category_ids
        super().__init__(transform, len(category_ids), name=f"coco folder {image_dir}")

        images = unique_images(coco["images"], self.skips)
        per_image = {img["id"]: [] for img in images}
        orphans = [ann for ann in coco["annotations"] if ann.get("image_id") not in per_image]
        for ann in coco["annotations"]:
            if ann.get("image_id") in per_image:
                per_image[ann["image_id"]].append(ann)
        if orphans:
            self.skips(
                "annotations of images missing from the file dropped",
                sorted({a.get("image_id") for a in orphans}, key=str)[:10],
                f"{len(orphans)} annotations",
            )
        cap = MAX_ANNOTATIONS_PER_IMAGE
        for image_id in [i for i, anns in per_image.items() if len(anns) > cap]:
            count = len(per_image[image_id])
            self.skips(
                f"annotations beyond {cap} per image dropped", image_id, f"{count - cap} of {count}"
            )
            per_image[image_id] = per_image[image_id][:cap]
        outside = next((img for img in images if leaves_folder(img.get("file_name", ""))), None)
        if outside:
            raise ValueError(
                f"{named}: image {outside['id']}'s file_name {outside.get('file_name')!r} lies "
                f"outside image_dir {str(image_dir)!r} (an absolute path or ../): point "
                "image_dir at a folder that holds every image, with file names relative to it"
            )
        check_boxes(images, per_image, named)
        self.image_dir = image_dir
        self.images = [
            img
            for img in images
            if keep_empty or any(not a.get("iscrowd", 0) for a in per_image[img["id"]])
        ]
        self.annotations = per_image
        if not self.images:
            what = "no images" if not coco["images"] else "no image with annotations"
            raise ValueError(
                f"data annotation_file={str(annotation_file)!r}: the data set is empty ({what}"
                f"{'' if keep_empty else '; keep_empty=false leaves out images without objects'})"
            )

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, index: int) -> str:
        info = self.images[index]
        return f"{info['id']} ({info['file_name']})"

    def labels(self, index: int) -> np.ndarray:
        anns = self.annotations[self.images[index]["id"]]
        trained = [a.get("category_id") for a in anns if not a.get("iscrowd", 0)]
        return np.array([self.label_of[c] for c in trained if c in self.label_of], np.int64)

    def record(self, index: int) -> Record:
        info = self.images[index]
        anns = self.annotations[info["id"]]
        unknown = [a for a in anns if a.get("category_id") not in self.label_of]
        if unknown:
            ids = sorted({a.get("category_id") for a in unknown}, key=str)
            self.skips("annotations with unknown category ids dropped", info["id"], str(ids))
            anns = [a for a in anns if a.get("category_id") in self.label_of]
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        labels = np.array([self.label_of.get(a["category_id"], 0) for a in anns], dtype=np.int64)
        iscrowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        area = np.array([a.get("area", w * h) for a, (w, h) in zip(anns, xywh[:, 2:], strict=True)])
        # encoded bytes: decoding happens in the transform, where a corrupt file is skipped
        image = (self.image_dir / info["file_name"]).read_bytes()
        size = (info["width"], info["height"]) if "width" in info and "height" in info else None
        return Record(image, boxes, labels, info["id"], iscrowd, area.astype(np.float32), size)


BOXES_CHECKED = 1000  # annotations read at start-up to catch a wrong box format


def check_boxes(images: list[dict], per_image: dict, named: str) -> None:
    """Stop at start-up where more than a fifth of the first annotations of images whose size
    the file records are no `[x, y, width, height]` box within their image: a file of another
    box format (xyxy) would otherwise train on the wrong geometry, silently."""
    rows = []
    for image in images:
        size = (image.get("width") or 0, image.get("height") or 0)
        if all(isinstance(v, int | float) for v in size) and min(size) > 0:  # a size recorded
            rows += [(a.get("bbox"), size) for a in per_image[image["id"]] if not a.get("iscrowd")]
        if len(rows) >= BOXES_CHECKED:
            break
    wrong = [
        (box, size)
        for box, size in rows
        if not (isinstance(box, list) and len(box) == 4)
        or box[2] <= 0
        or box[3] <= 0
        or box[0] + box[2] > size[0] + 1
        or box[1] + box[3] > size[1] + 1
    ]
    if rows and len(wrong) > len(rows) / 5:
        box, (width, height) = wrong[0]
        raise ValueError(
            f"{named}: {len(wrong)} of the first {len(rows)} boxes are no [x, y, width, height] "
            f"within their image (e.g. {box} in a {width} x {height} image): COCO's bbox is "
            "x_min, y_min, width, height in pixels; is the file in another box format (xyxy)?"
        )


def checked_category_ids(categories: list[dict], named: str) -> list[int]:
    """The sorted category ids; an id that is not an integer or is listed twice is refused
    (it would make two classes of one name, or fail to sort)."""
    ids = [c.get("id") for c in categories]
    wrong = [i for i in ids if not isinstance(i, int) or isinstance(i, bool)]
    if wrong:
        raise ValueError(f"{named}: category ids must be integers, not {wrong[:5]}")
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ValueError(f"{named}: category ids listed twice: {twice[:10]}")
    return sorted(ids)


def leaves_folder(file_name: str) -> bool:
    """Whether a file name reaches outside the image folder (absolute, or up through ..)."""
    path = PurePosixPath(str(file_name).replace("\\", "/"))
    return path.is_absolute() or ".." in path.parts


def unique_images(images: list[dict], skips) -> list[dict]:
    """The image entries with an integer id, each id once: an entry without one (null, a
    string) or listed again is skipped, counted and logged (else it would train and be
    evaluated twice)."""
    kept, seen = [], set()
    for image in images:
        image_id = image.get("id")
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            skips("image entries without an integer id skipped", repr(image_id))
        elif image_id in seen:
            skips("image entries listed twice skipped", image_id, image.get("file_name", ""))
        else:
            seen.add(image_id)
            kept.append(image)
    return kept
