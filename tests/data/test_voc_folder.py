"""Pascal VOC's layout read by the real parser: 1-based boxes, difficult objects, names."""

import shlex
import shutil

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser

from frcnn.data.transforms import Transform
from frcnn.data.voc_folder import VOC_CLASSES, VOCFolder
from tests.data.conftest import jpeg_bytes


def annotation(file_name, objects):
    """VOC xml for (name, (xmin, ymin, xmax, ymax), difficult) objects."""
    body = "".join(
        f"<object><name>{name}</name><difficult>{int(hard)}</difficult><bndbox>"
        f"<xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, (x0, y0, x1, y1), hard in objects
    )
    return f"<annotation><filename>{file_name}</filename>{body}</annotation>"


def voc_folder(root, samples, splits):
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True)
    for image_id, objects in samples.items():
        (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg_bytes(120, 80))
        (root / "Annotations" / f"{image_id}.xml").write_text(
            annotation(f"{image_id}.jpg", objects)
        )
    for split, ids in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture
def voc(tmp_path):
    samples = {
        "000001": [("dog", (11, 21, 60, 70), False), ("person", (1, 1, 30, 40), True)],
        "000002": [("car", (51, 11, 100, 50), False)],
        "000003": [],
    }
    return voc_folder(
        tmp_path / "VOC2007", samples, {"train": ["000001", "000003"], "val": ["000002"]}
    )


def test_boxes_move_to_pixel_edges_and_difficult_objects_are_ignored_regions(voc):
    source = VOCFolder(Transform(120), str(voc), "train")
    assert source.class_names == list(VOC_CLASSES) and source.num_classes == 20
    record = source.record(0)
    assert record.boxes.tolist() == [[10, 20, 60, 70], [0, 0, 30, 40]]
    assert record.labels.tolist() == [VOC_CLASSES.index("dog") + 1, VOC_CLASSES.index("person") + 1]
    assert record.iscrowd.tolist() == [False, True]
    counts = source.boxes_per_class()  # the difficult person is no box to train on
    assert counts.shape == (20,) and counts.sum() == 1 and counts[VOC_CLASSES.index("dog")] == 1
    _, target = source[0]  # 120 px: no resize
    assert target["labels"].tolist() == [VOC_CLASSES.index("dog") + 1]
    torch.testing.assert_close(target["boxes"], torch.tensor([[10.0, 20.0, 60.0, 70.0]]))
    torch.testing.assert_close(target["crowd_boxes"], torch.tensor([[0.0, 0.0, 30.0, 40.0]]))
    assert (
        len(source) == 2
        and len(VOCFolder(Transform(120), str(voc), "train", keep_empty=False)) == 1
    )


def test_a_difficult_flag_written_as_a_word_is_read_and_another_value_refused(voc):
    """<difficult>True</difficult> read as not difficult: a hard object trained, silently."""
    xml = voc / "Annotations" / "000001.xml"
    xml.write_text(xml.read_text().replace("<difficult>1<", "<difficult> True <"))
    assert VOCFolder(Transform(120), str(voc), "train").record(0).iscrowd.tolist() == [False, True]
    xml.write_text(xml.read_text().replace("<difficult> True <", "<difficult>yes<"))
    with pytest.raises(ValueError, match=r"000001.xml: <difficult>yes</difficult> is neither 0 n"):
        VOCFolder(Transform(120), str(voc), "train")


def test_a_split_list_a_windows_tool_wrote_is_read(voc):
    """UTF-8 with a byte-order mark, CRLF line ends: the ids as any list gives them."""
    (voc / "ImageSets" / "Main" / "train.txt").write_bytes(b"\xef\xbb\xbf000001\r\n000002\r\n")
    assert VOCFolder(Transform(120), str(voc), "train").describe(0) == "000001.jpg"


def test_a_class_list_of_ones_own_and_the_names_outside_it(voc):
    """Every unlisted name of the split at once, counted, and the list to give."""
    source = VOCFolder(Transform(120), str(voc), "val", class_names=["car", "bus"])
    assert source.record(0).labels.tolist() == [1]
    (voc / "ImageSets" / "Main" / "train.txt").write_text("000001\n000002\n000003\n")
    (voc / "Annotations" / "000003.xml").write_text(
        annotation("000003.jpg", [("dog", (1, 1, 9, 9), False)])
    )
    message = (
        r"the train split has 2 object names that data.class_names does not list: "
        r"dog \(2 objects, first in 000001.xml\), person \(1 object, first in 000001.xml\)\. "
        r"add them, e.g. data.class_names=\[car,bus,dog,person\]$"
    )
    with pytest.raises(ValueError, match=message):
        VOCFolder(Transform(120), str(voc), "train", class_names=["car", "bus"])


def test_a_set_of_ones_own_without_its_class_list_is_told_the_one_to_give(tmp_path):
    """VOC's 20 are the list by default: the names the split has, as a command line takes
    them, which Hydra reads back as the list that the set then loads with."""
    samples = {
        "1": [("helmet", (11, 21, 60, 70), False), ("traffic light", (1, 1, 9, 9), False)],
        "2": [("head", (1, 1, 30, 40), False), ("person", (5, 5, 40, 40), False)],
    }
    root = voc_folder(tmp_path / "VOC", samples, {"train": ["1", "2"]})
    with pytest.raises(ValueError, match=r"3 object names .* VOC's 20 classes unless") as err:
        VOCFolder(Transform(120), str(root), "train")
    (word,) = shlex.split(str(err.value).rpartition("e.g. ")[2])  # one shell word
    override = OverridesParser.create().parse_override(word)
    assert override.key_or_group == "data.class_names"
    names = override.value()
    assert names == ["head", "helmet", "person", "traffic light"]
    assert VOCFolder(Transform(120), str(root), "train", class_names=names).num_classes == 4


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<annotation><object><name>dog</name>", r"000001.xml is not valid XML"),
        (
            "<annotation><object><name>dog</name></object></annotation>",
            r"000001.xml: an object without a bndbox",
        ),
    ],
)
def test_an_annotation_that_cannot_be_read_stops_at_start_up(voc, xml, message):
    (voc / "Annotations" / "000001.xml").write_text(xml)
    with pytest.raises(ValueError, match=message):
        VOCFolder(Transform(120), str(voc), "train")


@pytest.mark.parametrize(
    "xmin",
    ["", "<xmin></xmin>", "<xmin>11,5</xmin>"],  # left out, empty, a decimal comma
)
def test_a_box_with_a_coordinate_that_is_no_number_is_dropped_and_counted(voc, xmin, caplog):
    xml = voc / "Annotations" / "000001.xml"
    xml.write_text(xml.read_text().replace("<xmin>11</xmin>", xmin))  # the dog's
    source = VOCFolder(Transform(120), str(voc), "train")  # 1 of the split's 2 boxes
    _, target = source[0]
    assert target["boxes"].shape == (0, 4)  # the person is difficult: an ignored region
    torch.testing.assert_close(target["crowd_boxes"], torch.tensor([[0.0, 0.0, 30.0, 40.0]]))
    assert source.skips.counts["malformed boxes dropped"] == 1
    assert "malformed boxes dropped (image 000001.jpg): 1 of 2;" in caplog.text  # its file
    assert source.boxes_per_class().sum() == 0  # the start-up's count of boxes to train on


def test_a_split_whose_boxes_are_mostly_no_numbers_stops_at_start_up(voc):
    """The boxes of a tool or a locale that writes coordinates otherwise, all dropped, would
    train the model on images without objects: the first one is shown."""
    xml = voc / "Annotations" / "000001.xml"
    xml.write_text(xml.read_text().replace("<ymin>21</ymin>", "<ymin>21,5</ymin>")
                   .replace("<xmax>30</xmax>", "<xmax>30px</xmax>"))  # fmt: skip
    with pytest.raises(ValueError, match="VOC2007' \\(train\\): 2 of its 2 boxes") as error:
        VOCFolder(Transform(120), str(voc), "train")
    assert (
        "000001.xml: <bndbox><xmin>11</xmin><ymin>21,5</ymin><xmax>60</xmax><ymax>70</ymax>"
        "</bndbox>): a bndbox holds xmin, ymin, xmax and ymax in pixels"
    ) in str(error.value)
    assert len(VOCFolder(Transform(120), str(voc), "val")) == 1  # its own boxes


def test_boxes_of_another_format_stop_at_start_up(voc):
    """x, y, width, height written as xmin, ymin, xmax, ymax (the dog's 70, 21, 50, 49: its
    xmax below its xmin) would train on the wrong geometry, or be dropped: the first is shown."""
    xml = voc / "Annotations" / "000001.xml"
    xml.write_text(
        xml.read_text()
        .replace("<xmin>11</xmin>", "<xmin>70</xmin>")
        .replace("<xmax>60</xmax><ymax>70</ymax>", "<xmax>50</xmax><ymax>49</ymax>")
    )
    message = r"VOC2007' \(train\): 1 of its 2 boxes are inverted or reach past the image size"
    with pytest.raises(ValueError, match=message) as error:
        VOCFolder(Transform(120), str(voc), "train")
    assert "000001.xml: <bndbox><xmin>70</xmin><ymin>21</ymin><xmax>50</xmax>" in str(error.value)
    assert "are they x, y, width and height?" in str(error.value)


def test_images_resized_since_they_were_annotated_stop_the_start_up(voc):
    """The xml's size is twice the files' (120 x 80): their boxes fit other pixels."""
    for xml in (voc / "Annotations").glob("*.xml"):
        size = "<size><width>240</width><height>160</height><depth>3</depth></size>"
        xml.write_text(xml.read_text().replace("</filename>", f"</filename>{size}"))
    resized = r"\(train\): 2 of its first 2 images are not the size the annotation file records"
    with pytest.raises(ValueError, match=resized):
        VOCFolder(Transform(64), str(voc), "train")


def test_a_split_without_images_stops_at_start_up(voc):
    (voc / "ImageSets" / "Main" / "test.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"the test split has no images"):
        VOCFolder(Transform(120), str(voc), "test")
    (voc / "ImageSets" / "Main" / "empty.txt").write_text("000003\n")  # an image, no object
    assert len(VOCFolder(Transform(120), str(voc), "empty")) == 1
    with pytest.raises(ValueError, match=r"the empty split has no images"):
        VOCFolder(Transform(120), str(voc), "empty", keep_empty=False)


def test_a_missing_split_names_the_ones_there_and_a_folder_without_lists_its_root(voc):
    with pytest.raises(
        FileNotFoundError, match=r"^split='trainval': .* \(it has \['train', 'val'\]"
    ):
        VOCFolder(Transform(120), str(voc), "trainval")
    with pytest.raises(FileNotFoundError, match=r"^root='.*JPEGImages': no .*train.txt, nor"):
        VOCFolder(Transform(120), str(voc / "JPEGImages"), "train")  # one level too deep


@pytest.mark.parametrize(
    ("width", "height", "size"),
    [("120", "80", (120, 80)), ("120.0", "80.0", (120, 80)), ("0", "0", None), ("", "", None)],
)
def test_the_recorded_size_as_tools_write_it(tmp_path, width, height, size):
    """Some tools write `120.0`, or 0 where they did not read the image: neither stops a run."""
    root = voc_folder(tmp_path / "VOC", {"1": [("dog", (11, 21, 60, 70), False)]}, {"train": ["1"]})
    xml = root / "Annotations" / "1.xml"
    recorded = f"<size><width>{width}</width><height>{height}</height></size>"
    xml.write_text(xml.read_text().replace("</filename>", f"</filename>{recorded}"))
    source = VOCFolder(Transform(120), str(root), "train")
    assert source.samples[0][2] == size and source.record(0).boxes.tolist() == [[10, 20, 60, 70]]


def test_images_are_found_by_id_as_voc_lays_them_out_else_by_the_xmls_filename(tmp_path):
    """`filename` as a labelling tool wrote it before the files were renamed to ids: the id's
    .jpg is read, as torchvision and Detectron2 read VOC; a .png is found by its `filename`."""
    samples = {"1": [("dog", (11, 21, 60, 70), False)], "2": [("cat", (1, 1, 30, 40), False)]}
    root = voc_folder(tmp_path / "VOC", samples, {"train": ["1", "2"]})
    xml = root / "Annotations" / "1.xml"
    xml.write_text(xml.read_text().replace("1.jpg", "IMG_0042.JPG"))
    xml = root / "Annotations" / "2.xml"
    xml.write_text(xml.read_text().replace("2.jpg", "2.png"))
    (root / "JPEGImages" / "2.jpg").rename(root / "JPEGImages" / "2.png")
    source = VOCFolder(Transform(120), str(root), "train")
    assert [source.describe(i) for i in range(2)] == ["1.jpg", "2.png"]
    assert [tuple(source[i][0].shape) for i in range(2)] == [(3, 120, 120)] * 2
    assert source.skips.counts == {}


def test_a_folder_without_its_images_stops_at_start_up(voc):
    """An annotations-only copy (JPEGImages left behind): named at start-up, not image by image."""
    for image in (voc / "JPEGImages").iterdir():
        image.unlink()
    with pytest.raises(FileNotFoundError, match=r"\(train\): none of its first 2 images exists"):
        VOCFolder(Transform(120), str(voc), "train")


def split_folders(root, splits):
    """Roboflow's Pascal VOC export: a folder per split, each image beside its xml file."""
    for split, samples in splits.items():
        (root / split).mkdir(parents=True)
        for file_name, objects in samples.items():
            (root / split / file_name).write_bytes(jpeg_bytes(120, 80))
            xml = root / split / f"{file_name.rpartition('.')[0]}.xml"
            xml.write_text(annotation(file_name, objects))
    return root


def test_split_folders_of_images_beside_their_xml_files(tmp_path):
    samples = {
        "b_jpg.rf.1.jpg": [("helmet", (11, 21, 60, 70), False)],
        "a.png": [("head", (1, 1, 30, 40), False), ("helmet", (5, 5, 40, 40), True)],
    }
    root = split_folders(tmp_path / "export", {"train": samples, "valid": samples})
    source = VOCFolder(Transform(120), str(root), "train", class_names=["head", "helmet"])
    assert [source.describe(i) for i in range(2)] == ["a.png", "b_jpg.rf.1.jpg"]
    assert source.image_file(1) == root / "train" / "b_jpg.rf.1.jpg"
    record = source.record(0)
    assert record.boxes.tolist() == [[0, 0, 30, 40], [4, 4, 40, 40]]
    assert record.labels.tolist() == [1, 2] and record.iscrowd.tolist() == [False, True]
    assert [tuple(source[i][0].shape) for i in range(2)] == [(3, 120, 120)] * 2
    assert len(VOCFolder(Transform(120), str(root), "valid", class_names=["head", "helmet"])) == 2
    with pytest.raises(FileNotFoundError, match=r"^split='val': .* \(it has \['train', 'valid'\]"):
        VOCFolder(Transform(120), str(root), "val", class_names=["head", "helmet"])


def test_xml_files_in_no_split_stop_at_start_up_or_train_all_together(tmp_path):
    """LabelImg's folder: images and xml files side by side, no split; split `all` reads them
    all (for data.val_fraction to hold some out)."""
    samples = {
        "2.jpg": [("helmet", (1, 1, 9, 9), False)],
        "1.png": [("head", (5, 5, 40, 40), False)],
    }
    root = split_folders(tmp_path, {"labelled": samples}) / "labelled"
    message = (
        r"its xml files lie in it, in no split: .* data.train.split=all data.val_fraction=0.1$"
    )
    with pytest.raises(FileNotFoundError, match=message):
        VOCFolder(Transform(120), str(root), "train")
    with pytest.raises(ValueError, match=r"VOC's 20 classes unless given.*\[head,helmet\]"):
        VOCFolder(Transform(120), str(root), "all")  # its names are not VOC's: refused
    every = VOCFolder(Transform(120), str(root), "all", class_names=["head", "helmet"])
    assert [every.image_file(i) for i in range(2)] == [root / "1.png", root / "2.jpg"]
    assert every.record(1).labels.tolist() == [2]


def test_the_folder_above_voc_s_names_the_one_to_give(voc):
    """torchvision's root holds VOCdevkit/VOC2007; Detectron2's and this project's is VOC2007."""
    devkit = voc.parent / "VOCdevkit"
    devkit.mkdir()
    voc.rename(devkit / "VOC2007")
    for above in (devkit, devkit.parent):
        message = r"no .*, nor a folder .* \(VOC's layout is in '.*/VOCdevkit/VOC2007': give it"
        with pytest.raises(FileNotFoundError, match=message):
            VOCFolder(Transform(120), str(above), "train")


def test_a_folder_of_another_layout_names_the_data_config_that_reads_it(tmp_path):
    """data=voc given Roboflow's YOLO export (train/images, train/labels, data.yaml), or a COCO
    json beside its images."""
    yolo, coco = tmp_path / "yolo", tmp_path / "coco"
    (yolo / "train" / "images").mkdir(parents=True)
    (yolo / "train" / "images" / "a.jpg").write_bytes(jpeg_bytes(120, 80))
    (yolo / "data.yaml").write_text("train: ../train/images\nnames: [helmet]\n")
    message = r"nor a folder .*/train \(it holds data.yaml: a YOLO data set, data=yolo\)$"
    with pytest.raises(FileNotFoundError, match=message):
        VOCFolder(Transform(120), str(yolo), "train")
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "instances_train2017.json").write_text("{}")
    message = r"nor a folder .*/train \(it holds annotations/instances_train2017.json: for a COCO "
    with pytest.raises(FileNotFoundError, match=message):
        VOCFolder(Transform(120), str(coco), "train")


def test_annotations_without_split_lists_stop_at_start_up_saying_what_to_write(voc):
    """Tools that write VOC's Annotations/ without ImageSets/ (no split of their own)."""
    shutil.rmtree(voc / "ImageSets")
    message = r"xml files are in Annotations/, but no ImageSets/Main/val.txt lists the val split"
    with pytest.raises(FileNotFoundError, match=message):
        VOCFolder(Transform(120), str(voc), "val")


def test_kaggles_lowercase_annotations_and_images_folders_are_voc_s(tmp_path):
    """Kaggle's sets in VOC's xml (face-mask-detection: annotations/*.xml, images/*.png, no
    split): the lists to write are named with those folders, and once written, read as VOC's;
    split `all` reads every xml file (for data.val_fraction to hold some out).
    An images/ that holds the xml files beside the images (LabelImg's) is a split folder."""
    samples = {"m0.png": [("with_mask", (11, 21, 60, 70), False)], "m1.png": []}
    root = split_folders(tmp_path / "masks", {"images": samples})
    with pytest.raises(FileNotFoundError, match=r"^split='train': .* \(it has \['images'\]\)$"):
        VOCFolder(Transform(120), str(root), "train", class_names=["with_mask"])
    (root / "annotations").mkdir()
    for xml in (root / "images").glob("*.xml"):
        xml.rename(root / "annotations" / xml.name)
    message = (
        r"its xml files are in annotations/, but no ImageSets/Main/val.txt lists the val split: "
        r".* its images in images/; or train on all of them, a share held out for "
        r"validation: data.train.split=all data.val_fraction=0.1$"
    )
    with pytest.raises(FileNotFoundError, match=message):
        VOCFolder(Transform(120), str(root), "val", class_names=["with_mask"])
    every = VOCFolder(Transform(120), str(root), "all", class_names=["with_mask"])
    assert [every.image_file(i).name for i in range(len(every))] == ["m0.png", "m1.png"]
    (root / "ImageSets/Main").mkdir(parents=True)
    (root / "ImageSets/Main/train.txt").write_text("m0\nm1\n")
    with pytest.raises(
        ValueError, match=r"VOC's 20 classes unless given.*class_names=\[with_mask\]"
    ):
        VOCFolder(Transform(120), str(root), "train")  # its names are not VOC's: refused
    source = VOCFolder(Transform(120), str(root), "train", class_names=["with_mask"])
    assert source.image_file(0) == root / "images" / "m0.png"
    assert source.record(0).boxes.tolist() == [[10, 20, 60, 70]]
    assert len(source) == 2 and source.record(1).boxes.shape == (0, 4)
