"""Any hub detection data set: its schema read from its features, its box format given, read
from the data where it leaves no doubt, or refused; through `datasets` over local parquet."""

import logging
import re

import pytest
import torch

from frcnn.data.coco_hub import HubDetection
from frcnn.data.hub_schema import decide_box_format, read_schema, row_id
from frcnn.data.transforms import Transform, id_number
from tests.data.conftest import CPPE5, cppe5_features, cppe5_parquet, jpeg_bytes
from tests.data.test_voc_folder import voc_folder
from tests.data.test_yolo_folder import write

# xywh boxes that no other reading fits: as xyxy, (120, 10, 50, 40) is inverted
TELLING = [[(120, 10, 50, 40, 4), (10, 20, 30, 30, 2)], [(150, 50, 40, 45, 0)]]
# small boxes near the corner: xyxy and xywh both fit, nothing tells them apart
AMBIGUOUS = [[(10, 10, 30, 30, 1)], [(5, 5, 20, 25, 3)]]


def stream(path, **kwargs):
    return HubDetection(
        Transform(200), "train", name="cppe-5", data_files=[path], shuffle=False, **kwargs
    )


def test_the_schema_and_class_names_come_from_the_features():
    schema = read_schema(cppe5_features(), "cppe-5")
    assert (schema.objects, schema.bbox, schema.category) == ("objects", "bbox", "category")
    assert schema.class_names == CPPE5 and schema.image_id == "image_id"


def test_features_without_an_image_boxes_or_usable_categories_are_refused_naming_them():
    from datasets import Features, Value

    features = cppe5_features()
    no_image = Features({k: v for k, v in features.items() if k != "image"})
    with pytest.raises(ValueError, match=r"cppe-5: no image column .* \['image_id', 'width'"):
        read_schema(no_image, "cppe-5")
    captions = Features({"image": features["image"], "text": Value("string")})
    with pytest.raises(ValueError, match=r"found no boxes and categories \(top-level fields"):
        read_schema(captions, "cppe-5")
    scores = cppe5_features(category=Value("float32"))
    with pytest.raises(ValueError, match=r"objects.category is .*float32.*, not a class index"):
        read_schema(scores, "cppe-5")


def test_rows_without_boxes_need_the_format_set():
    empty = [(torch.zeros(0, 4).numpy(), (200, 100))] * 3
    with pytest.raises(ValueError, match=r"first 3 rows hold no boxes .* set data.box_format"):
        decide_box_format(empty, None, None, "cppe-5")
    assert decide_box_format(empty, "xywh", False, "cppe-5") == ("xywh", False, "as set")


def test_a_plain_integer_category_is_named_by_data_class_names(tmp_path):
    """A data set whose category is an int64, not a ClassLabel: its card names the classes (the
    refusal says which values its first rows hold)."""
    from datasets import Value

    path = cppe5_parquet(tmp_path / "a.parquet", TELLING, category=Value("int64"))
    refused = (
        r"data.class_names: .* plain integer, not a ClassLabel, .* hold the values \[0, 2, 4\]\)$"
    )
    with pytest.raises(ValueError, match=refused):
        stream(path)
    ds = stream(path, class_names=CPPE5)
    assert ds.class_names == CPPE5 and ds.box_format == "xywh"  # read from the same rows
    (_, first), (_, second) = list(ds)
    assert first["labels"].tolist() == [5, 3] and second["labels"].tolist() == [1]
    # values counted from 1 (or a class list too short): value 4 with 4 names
    with pytest.raises(ValueError, match="the category values 0..3, but .* hold the value 4"):
        stream(path, class_names=CPPE5[:4])
    with pytest.raises(ValueError, match="names its classes itself"):  # a ClassLabel's
        stream(cppe5_parquet(tmp_path / "b.parquet", TELLING), class_names=["a", "b"])


def test_a_given_box_format_is_read_as_given(tmp_path):
    ds = stream(cppe5_parquet(tmp_path / "a.parquet", TELLING), box_format="xywh")
    assert ds.class_names == CPPE5 and ds.num_classes == 5
    (_, first), (_, second) = list(ds)
    torch.testing.assert_close(
        first["boxes"], torch.tensor([[120.0, 10, 170, 50], [10, 20, 40, 50]])
    )
    assert first["labels"].tolist() == [5, 3] and second["labels"].tolist() == [1]
    assert not ds.skips.counts  # every box kept


def test_the_format_is_read_from_the_rows_where_only_one_reading_fits(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        ds = stream(cppe5_parquet(tmp_path / "a.parquet", TELLING))
    assert (ds.box_format, ds.normalized) == ("xywh", False)
    assert "boxes are xywh in pixels (read from its first 2 rows (xyxy: 2 of 3" in caplog.text


def test_rows_that_leave_doubt_stop_at_start_up_naming_the_setting(tmp_path):
    with pytest.raises(
        ValueError, match="cannot be told .*: as xyxy and as xywh every box fits.*data.box_format"
    ):
        stream(cppe5_parquet(tmp_path / "a.parquet", AMBIGUOUS))


def test_boxes_that_fit_no_reading_are_told_so_naming_a_normalized_setting_given():
    """(The message said "every reading fit" where none did.)"""
    rows = [(torch.tensor([[120.0, 10, 50, 40]]).numpy(), (200, 100))]
    with pytest.raises(ValueError, match=r"1 of 1: no reading fits all, is data.normalized=true"):
        decide_box_format(rows, None, True, "x")
    rows = [(torch.tensor([[120.0, 10, 250, 40]]).numpy(), (200, 100))]
    with pytest.raises(ValueError, match=r"cxcywh: 1 of 1: no reading fits all\)"):
        decide_box_format(rows, None, None, "x")


def test_normalised_boxes_are_scaled_by_each_image():
    rows = [(torch.tensor([[0.5, 0.5, 0.2, 0.4]]).numpy(), (200, 100))]
    assert decide_box_format(rows, "cxcywh", None, "x")[:2] == ("cxcywh", True)
    with pytest.raises(ValueError, match="data.box_format='xy': one of xyxy, xywh, cxcywh"):
        decide_box_format(rows, "xy", None, "x")


def test_a_box_format_that_drops_most_boxes_stops_at_start_up(tmp_path):
    """cppe-5's xywh read as xyxy (the coco config's format): the probe's silent 84-92% drop."""
    with pytest.raises(
        ValueError, match="box_format=xyxy .* leaves 2 of the 3 boxes .* as xywh all fit"
    ):
        stream(
            cppe5_parquet(tmp_path / "a.parquet", TELLING),
            box_format="xyxy",
        )


def test_images_without_objects_are_negatives_unless_left_out(tmp_path):
    """keep_empty (default true) trains them; false leaves them out of the stream, uncounted
    as bad rows."""
    path = cppe5_parquet(tmp_path / "a.parquet", [TELLING[0], [], TELLING[1], []])
    kept = [t["image_id"] for _, t in stream(path, box_format="xywh")]
    left = stream(path, box_format="xywh", keep_empty=False)
    assert kept == [0, 1, 2, 3] and [t["image_id"] for _, t in left] == [0, 2]
    assert not left.skips.counts


def image_folder(root, splits=("train", "validation"), boxes=TELLING):
    """A data set in the layout the hub documents for detection sets uploaded as files: an
    image folder per split and a metadata.jsonl (file_name, objects{bbox, categories}), no id
    column; its categories plain integers, its boxes xywh pixels."""
    import json

    from PIL import Image

    for split in splits:
        (root / split).mkdir(parents=True)
        lines = []
        for i, objects in enumerate(boxes):
            Image.new("RGB", (200, 100), (40 * i, 90, 30)).save(root / split / f"{i:04d}.png")
            bbox = [list(map(float, o[:4])) for o in objects]
            categories = [o[4] for o in objects]
            objects = {"bbox": bbox, "categories": categories}
            lines.append(json.dumps({"file_name": f"{i:04d}.png", "objects": objects}))
        (root / split / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_an_image_folder_with_metadata_is_read_by_its_paths_and_ids_from_them(tmp_path):
    """Its rows hold image paths, not bytes (the images are read from the files), and no id
    column (each image's id is drawn from its path: the same on every pass, one per image)."""
    root = image_folder(tmp_path / "helmets")
    ds = HubDetection(
        Transform(200), "train", name=str(root), shuffle=False, class_names=CPPE5
    )  # a local folder: no hub request
    assert ds.schema.image_id is None and ds.box_format == "xywh"
    (image, first), (_, second) = list(ds)
    torch.testing.assert_close(
        first["boxes"], torch.tensor([[120.0, 10, 170, 50], [10, 20, 40, 50]])
    )
    assert first["labels"].tolist() == [5, 3] and second["labels"].tolist() == [1]
    assert image[:, 0, 0].tolist() == [0, 90, 30]  # the first file's pixels
    ids = [target["image_id"] for _, target in ds]
    assert ids == [first["image_id"], second["image_id"]] and len(set(ids)) == 2
    assert all(0 <= i < 2**48 for i in ids)
    assert not ds.skips.counts


def test_a_local_folder_of_another_layout_names_the_data_config_that_reads_it(tmp_path):
    """data=hub data.name=<a VOC or YOLO folder>: `datasets` reads it as text or images alone,
    without a detection set's columns (a VOC folder's features are None, which stopped it
    with a TypeError before)."""
    voc = voc_folder(tmp_path / "VOC2007", {"000001": []}, {"train": ["000001"]})
    with pytest.raises(
        ValueError, match=r"no datasets features .* \(it is laid out as Pascal VOC: data=voc\)$"
    ):
        HubDetection(Transform(200), "train", name=str(voc))
    yolo = write(
        tmp_path / "yolo",
        {"images/train/a.jpg": "0 0.5 0.5 0.2 0.4"},
        {"train": "images/train", "names": ["a"]},
    )
    with pytest.raises(ValueError, match=r"\(it holds data.yaml: a YOLO data set, data=yolo\)$"):
        HubDetection(Transform(200), "train", name=str(yolo))


def test_data_files_that_are_no_parquet_are_named_not_the_split(tmp_path):
    coco = tmp_path / "train.json"
    coco.write_text('{"images": [], "annotations": [], "categories": []}')
    message = r"^data_files=\[.*train.json'\]: .*not a parquet file. \(data_files: a hub data set's"
    with pytest.raises(ValueError, match=message):
        stream(str(coco))


def test_ids_of_rows_without_an_id_column_tell_apart_images_of_the_same_base_name():
    """A set pushed to the hub from an image folder keeps only its files' base names: two
    images named 0001.jpg in two folders are two images."""
    from datasets import Features, Image, Sequence, Value

    features = Features(
        {
            "image": Image(),
            "objects": Sequence({"bbox": Sequence(Value("float32")), "category": Value("int64")}),
        }
    )
    schema = read_schema(features, "pushed", class_names=["a"])
    assert schema.image_id is None

    def row(data, path):
        return {"image": {"bytes": data, "path": path}}

    first, second = row(b"one image", "0001.jpg"), row(b"another image", "0001.jpg")
    assert row_id(first, schema) != row_id(second, schema)
    assert row_id(first, schema) == row_id(row(b"one image", "0001.jpg"), schema)
    assert row_id(row(None, "/data/train/0001.jpg"), schema) != row_id(
        row(None, "/data/validation/0001.jpg"), schema
    )


def test_string_ids_name_their_rows_and_a_column_of_another_type_is_no_id(tmp_path):
    """Ids that are strings (Open Images' hex ids, file names) are numbered as the rows of a
    set without ids are: the same in every process, and no row skipped."""
    from datasets import Value

    ids = ["0002b66c9c498e", "Abyssinian_1"]
    ds = stream(cppe5_parquet(tmp_path / "a.parquet", TELLING, ids=ids))
    assert [target["image_id"] for _, target in ds] == [id_number(i) for i in ids]
    assert not ds.skips.counts
    assert read_schema(cppe5_features(image_id=Value("float32")), "x").image_id is None


def test_boxes_of_other_than_4_values_are_refused_naming_the_field(tmp_path, caplog):
    """Rotated boxes (x, y, w, h, angle): read 4 at a time they were a scramble of numbers."""
    from datasets import ClassLabel, Dataset, Features, Image, List, Value

    objects = List({"bbox": List(Value("float32")), "category": ClassLabel(names=["a", "b"])})
    rows = {
        "image": [{"bytes": jpeg_bytes(200, 100), "path": None}] * 4,
        "objects": [[{"bbox": [100, 50, 40, 20, 0.3], "category": 1}] * 4] * 4,
    }
    path = str(tmp_path / "rotated.parquet")
    Dataset.from_dict(rows, features=Features({"image": Image(), "objects": objects})).to_parquet(
        path
    )
    message = r"rotated.parquet'\]: its objects.bbox holds boxes of 5 values, not 4: rotated"
    with pytest.raises(ValueError, match=message):
        stream(path)
    given = stream(path, box_format="xywh", normalized=False)  # no rows read at start-up
    assert list(given) == [] and given.skips.counts == {"malformed record skipped": 4}
    assert "its objects.bbox holds boxes of 5 values" in caplog.text


def test_crowd_flags_make_ignored_regions_and_crowds_alone_no_objects(tmp_path):
    """An `iscrowd` field (COCO-derived sets, DocLayNet) marks crowd regions, as a COCO json's
    do: not trained on, given to the evaluation to ignore; a row of crowds alone is a negative."""
    crowded = [
        [(120, 10, 50, 40, 4, False), (10, 20, 30, 30, 2, True)],
        [(150, 50, 40, 45, 0, True)],
    ]
    path = cppe5_parquet(tmp_path / "a.parquet", crowded)
    assert read_schema(cppe5_features(crowds=True), "x").iscrowd == "iscrowd"
    (_, first), (_, second) = list(stream(path))
    assert first["labels"].tolist() == [5] and first["crowd_labels"].tolist() == [3]
    torch.testing.assert_close(first["crowd_boxes"], torch.tensor([[10.0, 20, 40, 50]]))
    assert second["boxes"].shape == (0, 4) and second["crowd_boxes"].shape == (1, 4)
    assert [t["image_id"] for _, t in stream(path, keep_empty=False)] == [0]
    (_, plain), _ = list(stream(cppe5_parquet(tmp_path / "b.parquet", TELLING)))
    assert "crowd_boxes" not in plain  # a set without the flag: as before


def test_crowd_flags_stored_as_strings_are_read_and_others_skip_their_row(tmp_path, caplog):
    """ "0" / "1" in a string column: not taken for a flag before, its crowd regions trained as
    objects. "no" (true to Python) is refused: at start-up in the rows read then, else its row
    is skipped and counted."""
    crowded = [[(120, 10, 50, 40, 4, "0"), (10, 20, 30, 30, 2, "1")], [(150, 50, 40, 45, 0, "no")]]
    path = cppe5_parquet(tmp_path / "a.parquet", crowded)
    told = "its objects.iscrowd: 'no' is neither 0 nor 1: a crowd flag is 0 (an object) or 1 (a"
    with pytest.raises(ValueError, match=re.escape(told)):
        stream(path)
    given = stream(path, box_format="xywh", normalized=False)  # no rows read at start-up
    assert given.schema.iscrowd == "iscrowd"
    ((_, first),) = list(given)
    assert first["labels"].tolist() == [5] and first["crowd_labels"].tolist() == [3]
    assert given.skips.counts == {"malformed record skipped": 1} and told in caplog.text


def test_a_category_of_class_names_is_numbered_by_data_class_names(tmp_path):
    """Categories stored as names (strings): `data.class_names` gives the list and the label
    order; refused without it (naming the names of its first rows), and where the first rows
    hold a name it leaves out."""
    from datasets import Value

    named = [[(x, y, w, h, CPPE5[c]) for x, y, w, h, c in image] for image in TELLING]
    path = cppe5_parquet(tmp_path / "a.parquet", named, category=Value("string"))
    refused = (
        r"data.class_names: .*'s objects.category holds class names \(strings\), .* \(its "
        r"first 2 rows name Coverall, Gloves, Mask\), "
        r"e.g. data.class_names=\[Coverall,Gloves,Mask\]$"
    )
    with pytest.raises(ValueError, match=refused):
        stream(path)
    ds = stream(path, class_names=list(reversed(CPPE5)))  # labels in the order given
    assert ds.box_format == "xywh"  # read from the same rows
    (_, first), (_, second) = list(ds)
    # Mask, Gloves and Coverall (4, 2, 0 in CPPE5) are labels 1, 3 and 5 of the reversed list
    assert first["labels"].tolist() == [1, 3] and second["labels"].tolist() == [5]
    with pytest.raises(ValueError, match=r"does not list \['Coverall'\], which .* first rows"):
        stream(path, class_names=CPPE5[1:])
