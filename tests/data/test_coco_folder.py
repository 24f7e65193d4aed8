import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from PIL import Image

from frcnn.data import DetectionDataModule
from frcnn.data.coco_folder import COCOFolder, leaves_folder
from frcnn.data.transforms import Transform, id_number
from tests.data.conftest import jpeg_bytes


def folder(root, **kwargs):
    return COCOFolder(
        Transform(400),
        str(root / "annotations/instances_val2017.json"),
        str(root / "val2017"),
        **kwargs,
    )


def test_category_ids_map_to_contiguous_labels_in_id_order(coco_folder):
    ds = folder(coco_folder)
    assert ds.num_classes == 3
    assert ds.label_of == {1: 1, 18: 2, 90: 3}
    assert ds.class_names == ["person", "dog", "toothbrush"]


def test_boxes_become_xyxy_and_crowds_are_left_out(coco_folder):
    ds = folder(coco_folder)
    image, target = ds[0]
    assert target["image_id"] == 1 and target["orig_size"] == (100, 200)
    assert target["labels"].tolist() == [2, 3]  # the crowd "person" is gone
    torch.testing.assert_close(
        target["boxes"], torch.tensor([[20.0, 40.0, 80.0, 120.0], [200.0, 20.0, 300.0, 120.0]])
    )


def test_crowd_flags_written_as_strings_are_read_and_others_refused(coco_folder):
    """ "0" was true to Python: every object of such a file was a crowd, left out, silently."""

    def flags(*values):
        def edit(coco):
            for ann, value in zip(coco["annotations"], values, strict=False):
                ann["iscrowd"] = value

        rewrite(coco_folder, edit)

    flags("0", "false", "True", None, False)
    image, target = folder(coco_folder)[0]
    assert target["labels"].tolist() == [2, 3] and target["crowd_labels"].tolist() == [1]
    flags(0, "no")
    with pytest.raises(ValueError, match=r"annotation 2's iscrowd is 'no': COCO's iscrowd is 0"):
        folder(coco_folder)


def test_empty_images_are_kept_or_dropped(coco_folder):
    assert len(folder(coco_folder)) == 4
    kept = folder(coco_folder, keep_empty=False)
    assert kept.image_ids.tolist() == [1, 2, 4]


def test_an_image_with_nothing_training_learns_from_is_as_empty(coco_folder):
    """keep_empty=false: an image whose only box is malformed (dropped when read), or of a
    category the file does not declare, trained as a negative before."""

    def edit(coco):
        coco["annotations"][3]["bbox"] = None  # image 2's one object
        coco["annotations"][4]["category_id"] = 5  # image 4's

    rewrite(coco_folder, edit)
    assert folder(coco_folder, keep_empty=False).image_ids.tolist() == [1]
    kept = folder(coco_folder)
    assert kept.image_ids.tolist() == [1, 2, 3, 4]
    assert kept.annotations.starts.tolist() == [0, 3, 4, 4, 5]


def test_a_corrupt_image_is_skipped_and_counted(coco_folder, caplog):
    ds = folder(coco_folder)
    _, target = ds[3]  # image 4 is truncated: the next readable one (wrapping round) comes instead
    assert target["image_id"] == 1
    assert ds.skips.counts == {"unreadable image skipped": 1}
    assert "unreadable image skipped (image 4 (4.jpg))" in caplog.text


def test_a_file_that_is_no_image_is_said_to_be_none(coco_folder, caplog):
    """(PIL's message names the bytes it was handed: `<_io.BytesIO object at 0x7f...>`.)"""
    (coco_folder / "val2017" / "4.jpg").write_text("<html>Not found</html>")
    folder(coco_folder)[3]
    assert (
        "unreadable image skipped (image 4 (4.jpg)): UnidentifiedImageError: no image format "
        "that PIL reads (another kind of file?)"
    ) in caplog.text
    assert "BytesIO" not in caplog.text


def test_a_run_of_unreadable_images_stops_training_naming_the_source(coco_folder):
    """Training substitutes the next readable image for an unreadable one, but not for ever: a
    data set none of whose images can be read stops with a message, not an endless search."""
    for image in (coco_folder / "val2017").glob("*.jpg"):
        image.write_bytes(image.read_bytes()[:100])
    ds = folder(coco_folder)
    with pytest.raises(RuntimeError, match=r"val2017: 50 consecutive samples from index 2 could"):
        ds[2]
    assert ds.skips.counts == {"unreadable image skipped": 50}
    ds.substitute = False  # validation: the image is skipped, no other comes instead
    assert ds[2] is None


def test_missing_files_fail_at_start_up(coco_folder):
    with pytest.raises(FileNotFoundError, match="annotation_file"):
        COCOFolder(Transform(64), str(coco_folder / "nope.json"), str(coco_folder / "val2017"))
    with pytest.raises(FileNotFoundError, match="image_dir"):
        COCOFolder(
            Transform(64),
            str(coco_folder / "annotations/instances_val2017.json"),
            str(coco_folder / "x"),
        )


def rewrite(root, edit):
    """Edit the fixture's annotation json in place with `edit(coco)`."""
    path = root / "annotations/instances_val2017.json"
    coco = json.loads(path.read_text())
    edit(coco)
    path.write_text(json.dumps(coco))


def test_validation_skips_an_unreadable_image_and_never_repeats_one(coco_folder):
    def source(transform):
        return folder(coco_folder)

    dm = DetectionDataModule(source, source, batch_size=2, num_workers=0, image_size=64)
    dm.setup("fit")
    seen = [t["image_id"] for b in dm.val_dataloader() if b for t in b["targets"]]
    assert sorted(seen) == [1, 2, 3]  # image 4 is truncated: left out, nothing in its place
    assert dm.val_set.skips.counts == {"unreadable image skipped": 1}
    trained = [t["image_id"] for b in dm.train_dataloader() for t in b["targets"]]
    assert len(trained) == 4  # training batches keep their size: the next image stands in


def test_a_decompression_bomb_is_skipped_counted_and_named(coco_folder, monkeypatch, caplog):
    Image.new("RGB", (1000, 1000)).save(coco_folder / "val2017" / "3.jpg")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000)  # 1 Mpx is then a bomb
    ds = folder(coco_folder)
    ds.substitute = False
    assert ds[2] is None
    assert "unreadable image skipped (image 3 (3.jpg)): DecompressionBombError" in caplog.text


def test_annotations_of_unknown_images_or_categories_are_dropped_and_named(coco_folder, caplog):
    def edit(coco):
        coco["annotations"].append(
            {"id": 9, "image_id": 77, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0}
        )
        coco["annotations"].append(
            {"id": 10, "image_id": 2, "category_id": 5, "bbox": [1, 1, 5, 5], "iscrowd": 0}
        )

    rewrite(coco_folder, edit)
    ds = folder(coco_folder)  # no KeyError at start-up
    assert "annotations of images missing from the file dropped (image [77])" in caplog.text
    _, target = ds[1]
    assert target["labels"].tolist() == [1]  # the unknown category 5 is gone, the person stays
    assert ds.skips.counts["annotations with unknown category ids dropped"] == 1
    assert "malformed" not in caplog.text


def test_an_annotation_file_without_annotations_says_the_data_set_is_empty(coco_folder):
    rewrite(coco_folder, lambda coco: coco.update(annotations=[]))
    with pytest.raises(ValueError, match="the data set is empty"):
        folder(coco_folder, keep_empty=False)


def test_a_missing_image_is_named_by_its_id_and_file(coco_folder, caplog):
    (coco_folder / "val2017" / "2.jpg").unlink()
    ds = folder(coco_folder)
    ds.substitute = False
    assert ds[1] is None
    assert "unreadable record skipped (image 2 (2.jpg))" in caplog.text


def test_null_ids_and_images_listed_twice_are_skipped_and_counted(coco_folder, caplog):
    def edit(coco):
        # a null category next to an unknown one (sorting them crashed mid-epoch before)
        coco["annotations"] += [
            {"id": 11, "image_id": 2, "category_id": None, "bbox": [1, 1, 5, 5], "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 5, "bbox": [1, 1, 5, 5], "iscrowd": 0},
            {"id": 13, "image_id": None, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 0},
        ]
        coco["images"] += [
            {"id": 2, "file_name": "2.jpg", "width": 0, "height": 0},  # listed twice
            {"id": None, "file_name": "3.jpg", "width": 0, "height": 0},
            {"id": 5.0, "file_name": "3.jpg", "width": 0, "height": 0},
            {"id": "", "file_name": "3.jpg", "width": 0, "height": 0},
        ]

    rewrite(coco_folder, edit)
    ds = folder(coco_folder)
    assert ds.image_ids.tolist() == [1, 2, 3, 4]
    assert ds.skips.counts["image entries listed twice skipped"] == 1
    assert ds.skips.counts["image entries without an integer or string id skipped"] == 3
    _, target = ds[1]
    assert target["labels"].tolist() == [1]  # the person stays; null and unknown are dropped
    assert "unknown category ids dropped (image 2 (2.jpg)): [5, None]" in caplog.text


def test_string_image_ids_are_ids_and_a_file_without_ids_is_refused_saying_so(coco_folder):
    """Ids that are strings (file names, as some converters write them; pycocotools takes
    them) name their images as integers do; their numbers are the same in every process."""

    def edit(coco):
        named = {i: f"frame_{i:04d}" for i in (1, 2, 3, 4)}
        for entry in coco["images"]:
            entry["id"] = named[entry["id"]]
        for annotation in coco["annotations"]:
            annotation["image_id"] = named[annotation["image_id"]]

    reference = folder(coco_folder)
    rewrite(coco_folder, edit)
    ds = folder(coco_folder)
    assert ds.image_ids.tolist() == [id_number(f"frame_{i:04d}") for i in (1, 2, 3, 4)]
    assert len(set(ds.image_ids.tolist())) == 4 and not ds.skips.counts
    for index in (0, 1):
        (_, target), (_, expected) = ds[index], reference[index]
        assert target["labels"].tolist() == expected["labels"].tolist()
        torch.testing.assert_close(target["boxes"], expected["boxes"])
        torch.testing.assert_close(target["crowd_boxes"], expected["crowd_boxes"])

    rewrite(coco_folder, lambda coco: [entry.update(id=None) for entry in coco["images"]])
    with pytest.raises(ValueError, match=r"empty \(none of its 4 image entries has an id, an"):
        folder(coco_folder)


def test_an_annotation_file_that_is_not_json_is_named_with_the_position(coco_folder):
    path = coco_folder / "annotations/instances_val2017.json"
    path.write_text(path.read_text()[:150])  # a truncated download
    with pytest.raises(
        ValueError, match=r"instances_val2017.json' is not valid JSON: .* line 1.*truncated"
    ):
        folder(coco_folder)


@pytest.mark.parametrize(
    ("name", "text", "hint"),
    [
        ("data.yaml", "train: images/train\nnames: [a]\n", "a YOLO data set's yaml? data=yolo "
         "data.root='{root}/data.yaml'"),
        ("Annotations/000001.xml", "<annotation></annotation>", "a Pascal VOC annotation? "
         "data=voc data.root='{root}'"),
    ],
)  # fmt: skip
def test_another_formats_annotations_name_the_data_config_that_reads_them(
    coco_folder, name, text, hint
):
    (coco_folder / name).parent.mkdir(exist_ok=True)
    (coco_folder / name).write_text(text)
    with pytest.raises(ValueError, match="is not valid JSON") as error:
        COCOFolder(Transform(400), str(coco_folder / name), str(coco_folder / "val2017"))
    assert str(error.value).endswith(f"({hint.format(root=coco_folder)})")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda coco: [{"image_id": 1, "bbox": [1, 2, 3, 4], "score": 0.9}],
         r"json' holds a JSON list, not a COCO annotation file .*: a file of detections\?$"),
        (lambda coco: {k: v for k, v in coco.items() if k != "annotations"},
         r"has no annotations list: .* \(a test split's image-info file has no boxes\)$"),
        (lambda coco: {"images": coco["images"], "annotations": [{"image_id": 1, "caption": "a"}]},
         r"json' has no categories list: a COCO annotation file has images, annotations"),
    ],
)  # fmt: skip
def test_json_that_is_no_coco_annotation_file_is_refused_saying_what_it_lacks(
    coco_folder, edit, message
):
    path = coco_folder / "annotations/instances_val2017.json"
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))
    with pytest.raises(ValueError, match=message):
        folder(coco_folder)


def test_a_missing_file_or_a_folder_given_for_the_file_is_named(coco_folder):
    named = r"^annotation_file='.*/annotations'"
    with pytest.raises(FileNotFoundError, match=f"{named} is a folder: it holds instances_val2017"):
        COCOFolder(Transform(400), str(coco_folder / "annotations"), str(coco_folder / "val2017"))
    with pytest.raises(
        FileNotFoundError, match=r"^annotation_file='.*/nothing.json': no such file"
    ):
        COCOFolder(Transform(400), str(coco_folder / "nothing.json"), str(coco_folder / "val2017"))


def test_a_json_with_a_byte_order_mark_is_read_and_one_in_another_encoding_refused(coco_folder):
    """Windows tools write UTF-8 with a byte-order mark, which json.loads refuses; a file
    saved in Latin-1 is named, not a UnicodeDecodeError."""
    path = coco_folder / "annotations/instances_val2017.json"
    text = path.read_text().replace('"dog"', '"chien"')
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert folder(coco_folder).class_names == ["person", "chien", "toothbrush"]
    path.write_bytes(text.replace('"chien"', '"lévrier"').encode("latin-1"))
    with pytest.raises(
        ValueError, match=r"instances_val2017.json is not UTF-8 text \(byte 0xe9 at"
    ):
        folder(coco_folder)


def annotation_file(tmp_path, categories, images=None, annotations=(), text=None):
    """A COCO json (or raw `text`) in tmp_path, its image folder tmp_path/images with the
    images it names (those within it)."""
    (tmp_path / "images").mkdir(exist_ok=True)
    images = images or [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}]
    for image in images:
        if not leaves_folder(image["file_name"]):
            path = tmp_path / "images" / image["file_name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(jpeg_bytes(64, 48))
    coco = {"images": images, "annotations": list(annotations), "categories": categories}
    path = tmp_path / "annotations.json"
    path.write_text(text if text is not None else json.dumps(coco))
    return str(path), str(tmp_path / "images")


@pytest.mark.parametrize(
    ("categories", "message"),
    [
        ([{"id": 1, "name": "a"}, {"id": 1, "name": "a"}], r"category ids listed twice: \[1\]"),
        ([{"id": 1, "name": "a"}, {"id": "2", "name": "b"}], r"must be integers, not \['2'\]"),
    ],
)
def test_category_ids_that_would_make_wrong_classes_are_refused(tmp_path, categories, message):
    with pytest.raises(ValueError, match=message):
        COCOFolder(Transform(64), *annotation_file(tmp_path, categories))


@pytest.mark.parametrize("file_name", ["../secret.jpg", "/etc/passwd", "sub/../../x.jpg"])
def test_a_file_name_outside_the_image_folder_is_refused(tmp_path, file_name):
    images = [{"id": 5, "file_name": file_name, "width": 64, "height": 48}]
    with pytest.raises(
        ValueError, match=f"image 5's file_name '{re.escape(file_name)}' lies outside"
    ):
        COCOFolder(Transform(64), *annotation_file(tmp_path, [{"id": 1, "name": "a"}], images))


def test_deeply_nested_json_is_named(tmp_path):
    text = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ValueError, match="annotations.json' nests its JSON too deep"):
        COCOFolder(Transform(64), *annotation_file(tmp_path, [], text=text))


def test_annotations_beyond_the_cap_are_dropped_and_counted(tmp_path, monkeypatch):
    import frcnn.data.coco_folder

    monkeypatch.setattr(frcnn.data.coco_folder, "MAX_ANNOTATIONS_PER_IMAGE", 3)
    anns = [{"id": i, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]} for i in range(7)]
    source = COCOFolder(
        Transform(64), *annotation_file(tmp_path, [{"id": 1, "name": "a"}], annotations=anns)
    )
    assert len(source.labels(0)) == 3
    assert source.skips.counts == {"annotations beyond 3 per image dropped": 1}


def test_boxes_in_another_format_stop_at_start_up(tmp_path):
    """xyxy boxes in a COCO json (x_max read as a width): most reach past the image."""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in range(1, 5)]
    xyxy = [[40, 10, 60, 40], [30, 20, 50, 45], [8, 8, 20, 30], [35, 5, 62, 20]]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": b} for i, b in enumerate(xyxy, 1)]
    files = annotation_file(tmp_path, [{"id": 1, "name": "a"}], images, anns)
    with pytest.raises(ValueError, match=r"3 of the first 4 boxes are no \[x, y, width, height\]"):
        COCOFolder(Transform(64), *files)


def test_a_malformed_bbox_drops_that_box_not_the_image(coco_folder, caplog):
    def edit(coco):
        coco["annotations"] += [
            {"id": 11, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5], "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 1, "bbox": [1, None, 5, 5], "iscrowd": 0},
            {"id": 13, "image_id": 2, "category_id": 1, "bbox": None, "area": None},
        ]

    rewrite(coco_folder, edit)
    ds = folder(coco_folder)
    _, target = ds[1]
    assert target["image_id"] == 2 and target["labels"].tolist() == [1]  # the image's good box
    assert ds.skips.counts == {"malformed boxes dropped": 1}
    assert "malformed boxes dropped (image 2 (2.jpg)): 3 of 4" in caplog.text
    # not counted as training's boxes either (the report's table, repeat factors)
    assert ds.labels(1).tolist() == [1] and ds.boxes_per_class().tolist() == [2, 1, 1]


def test_the_source_keeps_what_training_reads_not_the_parsed_file(tmp_path):
    """COCO's polygons, urls and licences are most of its file: a source that held the parsed
    file would hold it in every process and copy it into every loader worker."""
    images = [
        {"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48, "coco_url": "http://x" * 9}
        for i in range(1, 21)
    ]
    polygon = [[float(v) for v in range(400)]]
    anns = [
        {"id": i, "image_id": 1 + i % 20, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 20.5,
         "iscrowd": 0, "segmentation": polygon}
        for i in range(200)
    ]  # fmt: skip
    files = annotation_file(tmp_path, [{"id": 1, "name": "a"}], images, anns)
    source = COCOFolder(Transform(64), *files)
    assert len(source) == 20 and source.labels(0).tolist() == [1] * 10
    assert len(pickle.dumps(source)) < Path(files[0]).stat().st_size / 20


def test_a_bbox_with_a_null_in_a_file_that_records_sizes_is_checked_not_a_crash(tmp_path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, None, 5, 5]},
        *({"id": i, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]} for i in range(2, 6)),
    ]
    source = COCOFolder(
        Transform(64), *annotation_file(tmp_path, [{"id": 1, "name": "a"}], None, anns)
    )
    assert source.labels(0).tolist() == [1] * 4  # the malformed box: dropped, not counted
    anns[1:] = anns[:1] * 4
    with pytest.raises(ValueError, match=r"5 of the first 5 boxes .* \(e.g. \[1, None, 5, 5\]"):
        COCOFolder(Transform(64), *annotation_file(tmp_path, [{"id": 1, "name": "a"}], None, anns))


def test_images_not_the_size_the_file_records_are_skipped_or_stop_the_start_up(tmp_path, caplog):
    """An image resized since it was annotated fits other pixels than its boxes: one of 6 is
    skipped, counted and named; most of them (a resized copy of a data set) stop the start-up.
    (A recorded size that is the image's turned by its EXIF orientation is read: the phone
    photo tests of test_transforms.)"""
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 48} for i in range(1, 7)]
    images[2].update(width=128, height=96)  # its file is 64 x 48: halved after annotating
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [4, 4, 20, 20]} for i in range(1, 7)]
    files = annotation_file(tmp_path, [{"id": 1, "name": "a"}], images, anns)
    source = COCOFolder(Transform(64), *files)
    _, target = source[2]
    assert target["image_id"] == 4  # (training: the next readable image stands in)
    assert source.skips.counts == {"image not the size its annotation records skipped": 1}
    assert (
        "image not the size its annotation records skipped (image 3 (3.jpg)): the file is 64 x 48 "
        "pixels, its annotation says 128 x 96: its boxes would not fit it"
    ) in caplog.text
    for image in images[:4]:
        image.update(width=128, height=96)
    files = annotation_file(tmp_path, [{"id": 1, "name": "a"}], images, anns)
    resized = (
        r"4 of its first 6 images are not the size the annotation file records \(e.g. 1.jpg: "
        r"64 x 48 pixels, recorded 128 x 96\): were they resized after they were annotated\?"
    )
    with pytest.raises(ValueError, match=resized):
        COCOFolder(Transform(64), *files)


def test_an_image_dir_that_holds_none_of_the_images_stops_at_start_up(tmp_path):
    """image_dir one level too deep (the file names hold the folder, as `val2017/1.jpg`)."""
    images = [{"id": i, "file_name": f"val2017/{i}.jpg", "width": 64, "height": 48} for i in (1, 2)]
    files = annotation_file(tmp_path, [{"id": 1, "name": "a"}], images)
    (tmp_path / "images" / "val2017").rename(tmp_path / "val2017")  # the folder above: none
    wrong = r"image_dir='.*images': none of its first 2 images exists \(e.g. '.*val2017/1.jpg'\)"
    with pytest.raises(FileNotFoundError, match=wrong):
        COCOFolder(Transform(64), *files)
    assert len(COCOFolder(Transform(64), files[0], str(tmp_path))) == 2  # its parent: found


def test_file_names_written_on_windows_are_read(tmp_path):
    images = [{"id": 1, "file_name": "train/a.jpg", "width": 64, "height": 48}]
    files = annotation_file(tmp_path, [{"id": 1, "name": "a"}], images)
    coco = json.loads(Path(files[0]).read_text())
    coco["images"][0]["file_name"] = "train\\a.jpg"
    Path(files[0]).write_text(json.dumps(coco))
    source = COCOFolder(Transform(64), *files)
    assert source.describe(0) == "1 (train/a.jpg)" and source[0][1]["image_id"] == 1
