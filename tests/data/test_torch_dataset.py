"""Torch Datasets in torchvision's detection convention, read by DatasetSource and
DetectionDataModule.from_datasets: images and boxes as given, formats converted, refusals."""

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from frcnn.data import DatasetSource, DetectionDataModule, Transform
from frcnn.data.transforms import id_number


class Items(torch.utils.data.Dataset):
    """The items it is given, as a user's Dataset returns them."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def pixels(width=120, height=80):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def target(boxes, labels, **more):
    return {"boxes": boxes, "labels": torch.tensor(labels), **more}


def test_pil_and_tensor_images_and_boxes_as_given():
    """The tutorial's forms: a PIL image and a uint8 CHW tensor, xyxy pixel boxes; the
    image_id where the target has one (a string's `id_number`), the index where it has none;
    crowds kept apart."""
    array = pixels()
    items = [
        (Image.fromarray(array), target(torch.tensor([[10.0, 20, 50, 60]]), [2], image_id=7)),
        (torch.from_numpy(array).permute(2, 0, 1), target(torch.tensor([[0.0, 0, 30, 40],
         [5, 5, 25, 25]]), [1, 2], iscrowd=torch.tensor([0, 1]))),
        (Image.fromarray(array), target(torch.tensor([[1.0, 2, 3, 4]]), [1], image_id="IMG_7")),
    ]  # fmt: skip
    source = DatasetSource(Transform(120), Items(items), ["cat", "dog"])
    assert (source.num_classes, source.class_names, len(source)) == (2, ["cat", "dog"], 3)
    expected = [
        (7, [[10, 20, 50, 60]]),
        (1, [[0, 0, 30, 40]]),
        (id_number("IMG_7"), [[1, 2, 3, 4]]),
    ]
    for index, (image_id, boxes) in enumerate(expected):
        image, t = source[index]  # 120 x 80 on a 120 canvas: no resize
        assert t["image_id"] == image_id and t["boxes"].tolist() == boxes
        assert torch.equal(image[:, :80], torch.from_numpy(array).permute(2, 0, 1))
    assert source[1][1]["crowd_boxes"].tolist() == [[5, 5, 25, 25]]


def test_an_rgb_array_is_an_image_and_its_wrong_boxes_still_stop_at_start_up():
    """A uint8 (H, W, 3) array (e.g. from imageio) is taken as the PIL image of its pixels; the
    start-up checks read its boxes as they read any item's."""
    array = pixels()
    items = [(array, target(torch.tensor([[10.0, 20, 50, 60]]), [1]))]
    image, t = DatasetSource(Transform(120), Items(items), ["a"])[0]
    assert torch.equal(image[:, :80], torch.from_numpy(array).permute(2, 0, 1))
    assert t["boxes"].tolist() == [[10, 20, 50, 60]]
    xywh = [(array, target(torch.tensor([[60.0, 30, 40, 20]]), [1]))] * 3
    with pytest.raises(ValueError, match=r"3 of the 3 boxes.*item 0 of Items \(120 x 80\)"):
        DatasetSource(Transform(64), Items(xywh), ["a"])
    with pytest.raises(ValueError, match=r"labels? .*outside 1\.\.1"):
        DatasetSource(Transform(64), Items([(array, target(torch.zeros(1, 4) + 5, [0]))]), ["a"])


@pytest.mark.parametrize(
    ("form", "given"), [("XYWH", [10, 20, 40, 40]), ("CXCYWH", [30, 40, 40, 40])]
)
def test_bounding_boxes_of_another_format_are_converted(form, given):
    boxes = tv_tensors.BoundingBoxes([given], format=form, canvas_size=(80, 120))
    items = Items([(Image.fromarray(pixels()), target(boxes, [1]))])
    source = DatasetSource(Transform(120), items, ["a"])
    assert source[0][1]["boxes"].tolist() == [[10, 20, 50, 60]]


def test_pixels_are_taken_as_stored_whatever_their_exif_orientation():
    """The user's boxes were drawn on the image they give: a rotated phone photo is not turned."""
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to view
    Image.fromarray(pixels()).save(buffer, format="PNG", exif=exif)
    photo = Image.open(io.BytesIO(buffer.getvalue()))
    assert photo.getexif().get(0x0112) == 6
    items = Items([(photo, target(torch.tensor([[1.0, 2, 110, 70]]), [1]))])
    source = DatasetSource(Transform(120), items, ["a"])
    image, t = source[0]
    assert torch.equal(image[:, :80], torch.from_numpy(pixels()).permute(2, 0, 1))
    assert t["boxes"].tolist() == [[1, 2, 110, 70]]


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (torch.zeros(3, 8, 8), r"item 0 of Items is a Tensor, not \(image, target\)"),
        ((torch.zeros(3, 8, 8), {"boxes": torch.zeros(0, 4)}), r"has no \['labels'\]"),
        ((torch.zeros(3, 8, 8), target(torch.zeros(0, 4), [])), r"torch.float32 \(3, 8, 8\);"),
        (
            (pixels(), {"boxes": torch.tensor([[1.0, 2, 30, 40]]), "labels": ["cat"]}),
            r"item 0 of Items: its labels are \['cat'\], not class numbers: .* 1..C",
        ),
        ((pixels(), target(torch.tensor([[1.0, 2, 30, 40]]), [1.5])), r"labels are \[1.5\], not"),
        (
            (pixels(), target(torch.tensor([[1.0, 2, 30, 40, 0.5]]), [1])),
            r"shape \(1, 5\), not \(K",
        ),
        ((pixels(), target(torch.tensor([1.0, 2, 30, 40, 5]), [1])), r"boxes are of shape \(5,\)"),
    ],
)
def test_items_outside_the_convention_stop_at_start_up(item, message):
    with pytest.raises(TypeError, match=message):
        DatasetSource(Transform(64), Items([item]), ["a"])


@pytest.mark.skipif(
    "XYWHR" not in tv_tensors.BoundingBoxFormat.__members__,
    reason="this torchvision has no rotated boxes",
)
def test_rotated_bounding_boxes_stop_at_start_up():
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor([[9.0, 9, 20, 20, 30]]), format="XYWHR", canvas_size=(80, 120)
    )
    message = r"item 0 of Items: its boxes are rotated \(XYWHR\); the detector takes axis-al"
    with pytest.raises(TypeError, match=message):
        DatasetSource(Transform(64), Items([(pixels(), target(boxes, [1]))]), ["a"])


def test_boxes_of_another_format_stop_at_start_up_with_an_example():
    """xywh (or normalised) boxes taken for xyxy: inverted or outside, most of them."""
    image = Image.fromarray(pixels())
    items = [(image, target(torch.tensor([[60.0, 30, 40, 20]]), [1]))] * 3
    with pytest.raises(ValueError, match=r"3 of the 3 boxes.*item 0 of Items \(120 x 80\)"):
        DatasetSource(Transform(64), Items(items), ["a"])


@pytest.mark.parametrize(("labels", "names"), [([0, 1], ["a", "b"]), ([1, 3], ["a", "b"])])
def test_labels_outside_the_class_list_stop_at_start_up(labels, names):
    """0-based labels, or more classes than names: never trained on as something else."""
    boxes = torch.tensor([[10.0, 20, 50, 60], [60, 10, 90, 40]])
    items = Items([(Image.fromarray(pixels()), target(boxes, labels))])
    with pytest.raises(ValueError, match=r"item 0 of Items has labels \[[03]\] outside 1..2"):
        DatasetSource(Transform(64), items, names)


@pytest.mark.parametrize(
    ("names", "told"),
    [
        ("person", r"class_names='person': .*, e.g. \['person'\]$"),  # letters, each a class before
        (
            [1, 2],
            r"class_names=\[1, 2\]: the names of labels 1..C, a list of strings, e.g. \['1', '2'\]",
        ),
        ([], r"class_names=\[\]: the names of labels 1..C, a list of strings$"),
    ],
)
def test_class_names_that_are_no_list_of_names_stop_at_start_up(names, told):
    items = Items([(Image.fromarray(pixels()), target(torch.tensor([[10.0, 20, 50, 60]]), [1]))])
    data = DetectionDataModule.from_datasets(items, items, names, image_size=64, num_workers=0)
    with pytest.raises(ValueError, match="^from_datasets: " + told):
        data.setup("fit")


def test_from_datasets_trains_in_batches_of_the_contract_and_names_unknown_settings():
    image = Image.fromarray(pixels())
    items = Items([(image, target(torch.tensor([[10.0, 20, 50, 60]]), [1]))] * 4)
    dm = DetectionDataModule.from_datasets(
        items, items, class_names=["a"], image_size=64, batch_size=2, num_workers=0
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (2, 3, 64, 64) and dm.class_names == ["a"]
    assert dm.settings["image_size"] == 64 and dm.settings["num_classes"] is None
    with pytest.raises(TypeError, match=r"no setting \['img_size'\].*'image_size'"):
        DetectionDataModule.from_datasets(items, items, ["a"], img_size=64)


def test_one_dataset_validates_on_a_share_held_out_of_it():
    image = Image.fromarray(pixels())
    items = Items([(image, target(torch.tensor([[10.0, 20, 50, 60]]), [1]))] * 8)
    dm = DetectionDataModule.from_datasets(items, None, ["a"], num_workers=0, val_fraction=0.25)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (6, 2)
    assert dm.settings["val_fraction"] == 0.25
    with pytest.raises(TypeError, match=r"a validation Dataset and val_fraction .* one of the two"):
        DetectionDataModule.from_datasets(items, items, ["a"], val_fraction=0.25)
    with pytest.raises(ValueError, match=r"^data.val: no validation source: .*val_fraction=0.1"):
        DetectionDataModule.from_datasets(items, None, ["a"])


def test_a_saved_config_without_the_data_set_asks_for_the_data():
    with pytest.raises(ValueError, match="a config cannot rebuild it: give the data"):
        DatasetSource(Transform(64), "the training set given to frcnn.fit", [])
