import pytest
import torch

from frcnn.data.coco_folder import COCOFolder
from frcnn.data.transforms import Transform


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


def test_empty_images_are_kept_or_dropped(coco_folder):
    assert len(folder(coco_folder)) == 4
    kept = folder(coco_folder, keep_empty=False)
    assert [img["id"] for img in kept.images] == [1, 2, 4]


def test_a_corrupt_image_is_skipped_and_counted(coco_folder, caplog):
    ds = folder(coco_folder)
    _, target = ds[3]  # image 4 is truncated: the next readable one (wrapping round) comes instead
    assert target["image_id"] == 1
    assert ds.skips.counts == {"unreadable image skipped": 1}
    assert "unreadable image skipped (image 4)" in caplog.text


def test_missing_files_fail_at_start_up(coco_folder):
    with pytest.raises(FileNotFoundError, match="annotation_file"):
        COCOFolder(Transform(64), str(coco_folder / "nope.json"), str(coco_folder / "val2017"))
    with pytest.raises(FileNotFoundError, match="image_dir"):
        COCOFolder(
            Transform(64),
            str(coco_folder / "annotations/instances_val2017.json"),
            str(coco_folder / "x"),
        )
