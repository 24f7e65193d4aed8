"""The YOLO layout, as Ultralytics and Roboflow's export write it, read by the real parser."""

import pytest
import torch
import yaml
from PIL import Image

from frcnn.boxes import to_original_pixels
from frcnn.data.sources import image_suffixes
from frcnn.data.transforms import Transform
from frcnn.data.yolo_folder import YOLOFolder, label_file, parse_labels
from tests.data.conftest import jpeg_bytes
from tests.data.test_transforms import phone_photo, red
from tests.data.test_voc_folder import voc_folder

# a 200 x 100 image: (class, cx, cy, w, h) normalised -> xyxy in pixels
PERSON = "0 0.5 0.5 0.2 0.4"  # x 80..120, y 30..70
CAR = "1 0.25 0.25 0.1 0.1"  # x 40..60, y 20..30
POLYGON = "1 0.1 0.1 0.3 0.1 0.3 0.5 0.1 0.5"  # its box: x 20..60, y 10..50
PAST_EDGE = "0 0.02 0.5 0.1 0.4"  # x -6..14, y 30..70: past the left border, clipped to it


def write(root, images: dict[str, str | None], data: dict):
    """`images`: relative image path -> label file text (None: no label file)."""
    for relative, labels in images.items():
        image = root / relative
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(jpeg_bytes(200, 100))
        if labels is not None:
            label_file(image).parent.mkdir(parents=True, exist_ok=True)
            label_file(image).write_text(labels)
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    return root


@pytest.fixture
def ultralytics(tmp_path):
    labels = [PERSON, CAR, POLYGON, "not a line", "7 0.5 0.5 0.1 0.1", "0 1.2 0.5 .2 .2", PAST_EDGE]
    labels = "\n".join(labels)
    images = {"images/train/a.jpg": labels, "images/train/b.jpg": None, "images/val/c.jpg": CAR}
    data = {
        "path": ".",
        "train": "images/train",
        "val": "images/val",
        "names": {0: "person", 1: "car"},
    }
    return write(tmp_path / "yolo", images, data)


def test_ultralytics_layout_boxes_in_pixels_names_from_the_yaml(ultralytics, caplog):
    source = YOLOFolder(Transform(200), str(ultralytics), "train")
    assert source.class_names == ["person", "car"] and source.num_classes == 2
    assert [p.name for p in source.images] == ["a.jpg", "b.jpg"]
    record = source.record(0)
    # the malformed line and the pixel box (1.2) are dropped here, the class id 7 downstream
    assert record.labels.tolist() == [1, 2, 2, 8, 1]
    expected = [
        [80, 30, 120, 70], [40, 20, 60, 30], [20, 10, 60, 50], [90, 45, 110, 55], [-6, 30, 14, 70]
    ]  # fmt: skip
    torch.testing.assert_close(
        torch.tensor(record.boxes), torch.tensor(expected, dtype=torch.float32)
    )
    assert source.skips.counts == {
        "malformed label lines dropped": 1,
        "boxes not normalised to 0..1 dropped": 1,
    }
    _, target = source[0]
    assert target["labels"].tolist() == [1, 2, 2, 1]  # class id 7: no such class, dropped
    assert source.skips.counts["boxes outside the image clipped"] == 1
    # the warnings name the image's file, not its position in the split
    image, labels = ultralytics / "images/train/a.jpg", ultralytics / "labels/train/a.txt"
    assert f"malformed label lines dropped (image {image}): 1 in {labels};" in caplog.text
    assert f"boxes outside the image clipped (image {image}): 1 of 4;" in caplog.text
    original = to_original_pixels(target["boxes"], target["scale_xy"], target["orig_size"])
    kept = expected[:3] + [[0, 30, 14, 70]]
    torch.testing.assert_close(original, torch.tensor(kept, dtype=torch.float32), atol=1, rtol=0)
    _, empty = source[1]  # no label file: an image without objects
    assert empty["boxes"].shape == (0, 4)


def test_a_line_whose_class_id_is_no_integer_is_malformed():
    """Not a crash at start-up (int() of nan or inf raises) but one malformed line each."""
    text = "\n".join(
        [PERSON, "nan 0.5 0.5 0.2 0.4", "1e400 0.5 0.5 0.2 0.4", "1.5 0.5 0.5 0.2 0.4"]
    )
    classes, boxes, bad = parse_labels(text)
    assert classes.tolist() == [0] and bad == 3
    torch.testing.assert_close(boxes, torch.tensor([[0.5, 0.5, 0.2, 0.4]]).numpy())


def test_photos_pil_cannot_read_here_are_left_out_and_named(
    without_the_heic_extra, tmp_path, caplog
):
    """A phone's HEIC photos, without the `heic` extra, beside a JPEG saved as .jfif (as
    browsers on Windows save them) and an AVIF file: the HEICs are named where they are left
    out, with the extra that reads them; the others read (the AVIF where this PIL reads AVIF,
    else named too)."""
    images = {"images/train/a.jfif": PERSON, "images/train/b.heic": CAR, "images/train/c.HEIC": CAR}
    data = {"train": "images/train", "val": "images/train", "names": ["person", "car"]}
    root = write(tmp_path / "yolo", images, data)
    reads_avif = ".avif" in image_suffixes()
    if reads_avif:
        Image.new("RGB", (200, 100), (200, 40, 40)).save(root / "images/train/d.avif")
    else:
        (root / "images/train/d.avif").write_bytes(b"(not read)")
    label_file(root / "images/train/d.avif").write_text(CAR)
    with caplog.at_level("WARNING"):
        source = YOLOFolder(Transform(200), str(root), "train")
    left_out = ".avif: 1, .heic: 2" if not reads_avif else ".heic: 2"
    message = f"images/train): images in formats PIL cannot read here left out ({left_out}): "
    assert message + "convert them to JPEG or PNG; HEIC photos are read with the `heic` " in (
        caplog.text
    )
    assert [p.name for p in source.images] == ["a.jfif"] + ["d.avif"] * reads_avif
    for index in range(len(source)):
        image, target = source[index]
        assert image.shape == (3, 200, 200) and len(target["boxes"]) == 1


def test_labels_where_yolos_layout_does_not_look_stop_at_start_up(tmp_path):
    """train/img/ beside train/lbl/: no image has a label file where Ultralytics' rule looks,
    so every one would train as an image without objects; the file of the first one's name is
    named. A split where one image of many has a label file is read (the rest: negatives).
    Without images with objects, keep_empty=false says so (not "no images")."""
    root = tmp_path / "yolo"
    for i in range(3):
        write(root, {f"train/img/{i}.jpg": None}, {"train": "train/img", "names": ["a"]})
        (root / "train/lbl").mkdir(parents=True, exist_ok=True)
        (root / "train/lbl" / f"{i}.txt").write_text(PERSON)
    message = (
        r"\(train\): none of its 3 images has a label file where YOLO's layout puts it .*"
        r"train/img/0.jpg -> .*train/img/0.txt\); .*train/lbl/0.txt has the first one's name"
    )
    for keep_empty in (True, False):  # (not "no images", where images without objects go)
        with pytest.raises(FileNotFoundError, match=message):
            YOLOFolder(Transform(200), str(root), "train", keep_empty=keep_empty)
    (root / "train/lbl/2.txt").rename(root / "train/img/2.txt")
    assert len(YOLOFolder(Transform(200), str(root), "train")) == 3
    (root / "train/img/2.txt").write_text("")  # label files, none with an object
    with pytest.raises(ValueError, match="the train split has no image with objects"):
        YOLOFolder(Transform(200), str(root), "train", keep_empty=False)


def test_the_class_count_nc_is_checked_against_names_and_names_classes_alone(tmp_path):
    images = {"images/train/a.jpg": PERSON}
    data = {"train": "images/train", "nc": 3, "names": ["person", "car"]}
    with pytest.raises(ValueError, match="nc=3, but `names` has 2 classes"):
        YOLOFolder(Transform(200), str(write(tmp_path / "a", images, data)), "train")
    data = {"train": "images/train", "nc": 2}
    source = YOLOFolder(Transform(200), str(write(tmp_path / "b", images, data)), "train")
    assert source.class_names == ["class_0", "class_1"]
    data = {"train": "images/train", "names": {"1": "car", "0": "person"}}  # keys quoted
    source = YOLOFolder(Transform(200), str(write(tmp_path / "c", images, data)), "train")
    assert source.class_names == ["person", "car"]


def test_a_line_written_twice_is_one_object(tmp_path):
    """As Ultralytics reads it: a repeated line dropped, counted; the order kept."""
    images = {
        "images/train/a.jpg": "\n".join([CAR, PERSON, CAR, f"{PERSON}0"]),
        "images/val/b.jpg": CAR,
    }
    data = {"train": "images/train", "val": "images/val", "names": ["person", "car"]}
    source = YOLOFolder(Transform(200), str(write(tmp_path / "yolo", images, data)), "train")
    record = source.record(0)
    assert record.labels.tolist() == [2, 1]  # "0.20" is the same number as "0.2"
    torch.testing.assert_close(
        torch.tensor(record.boxes), torch.tensor([[40.0, 20, 60, 30], [80, 30, 120, 70]])
    )
    assert source.skips.counts == {"repeated label lines dropped": 1}


def test_images_without_objects_can_be_left_out(ultralytics):
    assert len(YOLOFolder(Transform(200), str(ultralytics), "train", keep_empty=False)) == 1


def test_roboflow_export_and_list_files(tmp_path):
    """Roboflow's `../train/images` is read beside data.yaml; the logs name the folder read
    (the start-up's `Data:` lines, every skip), and a list file where data.yaml gives one."""
    images = {"train/images/x.jpg": PERSON, "valid/images/y.jpg": CAR}
    root = write(
        tmp_path / "rf",
        images,
        {
            "train": "../train/images",
            "val": "../valid/images",
            "nc": 2,
            "names": ["helmet", "head"],
        },
    )
    source = YOLOFolder(Transform(200), str(root / "data.yaml"), "val")
    assert source.class_names == ["helmet", "head"]
    assert source.record(0).labels.tolist() == [2]
    assert source.skips.source == f"yolo {root / 'data.yaml'}, split val: valid/images"
    (root / "val.txt").write_text("./valid/images/y.jpg\n./train/images/x.jpg\n")
    (root / "data.yaml").write_text(
        yaml.safe_dump({"val": "val.txt", "train": ["train/images"], "names": ["helmet", "head"]})
    )
    listed = YOLOFolder(Transform(200), str(root), "val")
    assert [p.name for p in listed.images] == ["y.jpg", "x.jpg"]
    assert listed.skips.source.endswith("data.yaml, split val: val.txt")
    assert len(YOLOFolder(Transform(200), str(root), "train")) == 1
    outside = {"train": [str(root / "train/images"), "../valid/images"], "names": ["a", "b"]}
    (root / "sub").mkdir()
    (root / "sub/data.yaml").write_text(yaml.safe_dump(outside))
    both = YOLOFolder(Transform(200), str(root / "sub"), "train")
    assert both.skips.source.endswith(f"split train: {root}/train/images, {root}/valid/images")


def test_files_a_windows_tool_wrote_are_read_as_any(tmp_path):
    """UTF-8 with a byte-order mark and CRLF line ends, in data.yaml, a list file and the
    label files, and paths with backslashes: the same boxes, no line malformed. A label file
    in UTF-16 is named."""
    bom = "\ufeff"
    images = {"images/train/a.jpg": f"{bom}{PERSON}\r\n{CAR}\r\n", "images/val/c.jpg": CAR}
    root = write(tmp_path / "yolo", images, {})
    (root / "val.txt").write_text(f"{bom}.\\images\\val\\c.jpg\r\n", encoding="utf-8")
    data = "train: images\\train\r\nval: val.txt\r\nnames: [person, 汽车]\r\n"
    (root / "data.yaml").write_bytes((bom + data).encode())
    source = YOLOFolder(Transform(200), str(root), "train")
    assert source.class_names == ["person", "汽车"]
    assert source.record(0).labels.tolist() == [1, 2] and not source.skips.counts
    assert [p.name for p in YOLOFolder(Transform(200), str(root), "val").images] == ["c.jpg"]
    label_file(root / "images/val/c.jpg").write_text(CAR, encoding="utf-16")  # Notepad's "Unicode"
    with pytest.raises(ValueError, match=r"labels/val/c.txt is not UTF-8 text \(byte 0xff at po"):
        YOLOFolder(Transform(200), str(root), "val")


def test_a_validation_key_is_the_val_split_as_ultralytics_reads_it(tmp_path):
    images = {"images/train/a.jpg": PERSON, "images/val/c.jpg": CAR}
    data = {"train": "images/train", "validation": "images/val", "names": ["person", "car"]}
    root = write(tmp_path / "yolo", images, data)
    assert [p.name for p in YOLOFolder(Transform(200), str(root), "val").images] == ["c.jpg"]
    with pytest.raises(
        FileNotFoundError, match=r"split='test': .* \(it names \['train', 'validation'\]"
    ):
        YOLOFolder(Transform(200), str(root), "test")


def test_a_folder_of_another_layout_names_the_data_config_that_reads_it(tmp_path):
    """data=yolo given a VOC folder, or a folder holding a COCO json (a first try's wrong
    `data=`): the message names the config to choose."""
    voc = voc_folder(tmp_path / "VOC2007", {"000001": []}, {"train": ["000001"]})
    with pytest.raises(
        FileNotFoundError, match=r"no data.yaml \(it is laid out as Pascal VOC: data=voc\)$"
    ):
        YOLOFolder(Transform(200), str(voc), "train")
    coco = tmp_path / "mine"
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "instances_train.json").write_text("{}")
    held = r"it holds annotations/instances_train.json: for a COCO json, data=coco_files with "
    with pytest.raises(FileNotFoundError, match=held):
        YOLOFolder(Transform(200), str(coco), "train")


def test_a_missing_yaml_or_split_is_named(tmp_path, ultralytics):
    with pytest.raises(FileNotFoundError, match="no data.yaml"):
        YOLOFolder(Transform(200), str(tmp_path), "train")
    above = r"no data.yaml \(a folder above holds one: data.root='.*/yolo'\)$"
    with pytest.raises(FileNotFoundError, match=above):
        YOLOFolder(Transform(200), str(ultralytics / "images" / "train"), "train")
    (tmp_path / "classes.txt").write_text("helmet\nhead, no helmet\n\n")  # Label Studio's
    data = r"train: images/train, val: images/val, names: \[helmet, 'head, no helmet'\]\)$"
    with pytest.raises(FileNotFoundError, match=r"it holds classes.txt, .* e\.g\. " + data):
        YOLOFolder(Transform(200), str(tmp_path), "train")
    # Label Studio's export: images/, labels/ and classes.txt, no split; CVAT's: obj.names
    # beside obj_train_data/
    for tool, names, images in (
        ("label_studio", "classes.txt", "images"), ("cvat", "obj.names", "obj_train_data")
    ):  # fmt: skip
        export = tmp_path / tool
        (export / images).mkdir(parents=True)
        (export / names).write_text("helmet\n")
        data = rf"e\.g\. train: {images}, names: \[helmet\]; with no validation split, data\."
        with pytest.raises(FileNotFoundError, match=rf"it holds {names}, .* {data}val_fraction"):
            YOLOFolder(Transform(200), str(export), "train")
    with pytest.raises(
        FileNotFoundError, match=r"^split='test': .*names no such split .*'train', 'val'"
    ):
        YOLOFolder(Transform(200), str(ultralytics), "test")


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("names: [person, car", r"data.yaml is not valid YAML"),
        ("train: images/train\nval: images/val\n", r"has no `names` \(the class names\) or `nc`"),
        ("train: images/train\nnc: 0\n", r"nc=0: the number of classes, an integer >= 1"),
        ("train: images/train\nnames: {0: a, 2: b}\n", r"`names` must have the class ids 0..1"),
        ("train: images/train\nnames: person\n", r"`names` must be a list or a dict of class"),
        ("train: images/nowhere\nnames: [a]\n", r"train='images/nowhere': no such folder or file"),
        ("train: empty\nnames: [a]\n", r"the train split has no images"),
    ],
)
def test_a_data_yaml_that_cannot_be_read_right_stops_at_start_up(ultralytics, yaml_text, message):
    (ultralytics / "empty").mkdir()
    (ultralytics / "data.yaml").write_text(yaml_text)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        YOLOFolder(Transform(200), str(ultralytics), "train")


@pytest.mark.parametrize(("suffix", "format"), [(".jpg", "JPEG"), (".heic", "HEIF")])
def test_labels_of_a_phone_photo_are_read_against_its_upright_size(tmp_path, suffix, format):
    """Ultralytics normalises a label by the upright image (stored 80 x 40, EXIF-turned 40 x 80);
    an iPhone's HEIC photo (the `heic` extra) as a JPEG."""
    root = write(
        tmp_path / "yolo",
        {f"images/train/p{suffix}": "0 0.875 0.125 0.25 0.25"},
        {"train": "images/train", "names": ["block"]},
    )
    (root / "images" / "train" / f"p{suffix}").write_bytes(phone_photo(format=format))
    source = YOLOFolder(Transform(80), str(root), "train")
    assert source.record(0).boxes.tolist() == [[30.0, 0.0, 40.0, 20.0]]
    image, target = source[0]
    assert target["orig_size"] == (80, 40) and red(image, 37, 3)


@pytest.mark.parametrize(
    ("labels", "names"),
    [
        ("0 100 50 40 20\n1 30 30 10 10", ["a", "b"]),
        ("4 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.1 0.1", ["a"]),
    ],
    ids=["pixel boxes", "another class list"],
)
def test_labels_in_another_format_or_class_list_stop_at_start_up(tmp_path, labels, names):
    root = write(
        tmp_path / "yolo", {"images/train/a.jpg": labels}, {"train": "images/train", "names": names}
    )
    with pytest.raises(ValueError, match=r"2 of the 2 label lines .* are not `class cx cy w h`"):
        YOLOFolder(Transform(200), str(root), "train")


def test_class_ids_counted_from_1_stop_at_start_up(tmp_path):
    """Ids 1..C, never 0: every class but the last would train as the next, silently (the
    last, out of range, dropped). A set whose first images lack class 0 but stay in range
    trains."""
    images = {f"images/train/{i}.jpg": f"{i % 3 + 1} 0.5 0.5 0.2 0.2" for i in range(6)}
    data = {"train": "images/train", "names": ["a", "b", "c"]}
    root = write(tmp_path / "from1", images, data)
    message = r"use class ids up to 3 and never 0, with 3 names .*: are they counted from 1\?"
    with pytest.raises(ValueError, match=message):
        YOLOFolder(Transform(200), str(root), "train")
    images = {f"images/train/{i}.jpg": f"{i % 2 + 1} 0.5 0.5 0.2 0.2" for i in range(6)}
    assert len(YOLOFolder(Transform(200), str(write(tmp_path / "no0", images, data)), "train")) == 6


def test_corner_boxes_taken_for_centres_stop_at_start_up(tmp_path):
    """x0 y0 x1 y1 in 0..1 pass the range check; read as cx cy w h, most reach past the image
    (one box cut by the frame is YOLO's own, and passes)."""
    corners = "0 0.1 0.2 0.5 0.6\n0 0.6 0.5 0.9 0.9\n0 0.3 0.3 0.5 0.5"
    root = write(
        tmp_path / "yolo",
        {"images/train/a.jpg": corners},
        {"train": "images/train", "names": ["a"]},
    )
    with pytest.raises(ValueError, match=r"2 of the 3 label lines .* are they `class x0 y0 x1 y1`"):
        YOLOFolder(Transform(200), str(root), "train")
    one_cut = "\n".join([PERSON, PAST_EDGE, PERSON])
    (root / "labels" / "train" / "a.txt").write_text(one_cut)
    assert len(YOLOFolder(Transform(200), str(root), "train")) == 1


def test_a_split_whose_images_are_nowhere_stops_at_start_up(tmp_path):
    """A list of images relative to another folder than its own: none of them is found."""
    root = write(tmp_path / "yolo", {"images/train/a.jpg": PERSON}, {"names": ["person"]})
    (root / "train.txt").write_text("images/elsewhere/a.jpg\nimages/elsewhere/b.jpg\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "train.txt", "names": ["person"]}))
    with pytest.raises(FileNotFoundError, match=r"\(train\): none of its first 2 images exists"):
        YOLOFolder(Transform(200), str(root), "train")
