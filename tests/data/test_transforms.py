import io

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn.data.transforms import Record, Transform, collate


def record(width=200, height=100, boxes=((20.0, 10.0, 60.0, 50.0),), labels=(1,), mode="RGB"):
    image = Image.new(mode, (width, height))
    return Record(image, np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(labels), 7)


def test_letterbox_keeps_aspect_and_pads_right_and_bottom():
    rec = record(200, 100)
    rec.image.paste((255, 0, 0), (0, 0, 200, 100))
    image, target = Transform(400, "letterbox")(rec)
    assert image.shape == (3, 400, 400) and image.dtype == torch.uint8
    assert (image[0, :200, :] == 255).all() and (image[:, 200:, :] == 0).all()
    torch.testing.assert_close(target["scale_xy"], torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(target["boxes"], torch.tensor([[40.0, 20.0, 120.0, 100.0]]))
    assert target["orig_size"] == (100, 200) and target["image_id"] == 7


def test_stretch_scales_each_axis():
    image, target = Transform(400, "stretch")(record(200, 100))
    torch.testing.assert_close(target["scale_xy"], torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(target["boxes"], torch.tensor([[40.0, 40.0, 120.0, 200.0]]))


@pytest.mark.parametrize("mode", ["letterbox", "stretch"])
def test_scale_xy_maps_boxes_back_to_original_pixels(mode):
    rec = record(333, 217, boxes=((12.5, 30.0, 301.0, 200.0),))
    _, target = Transform(256, mode)(rec)
    original = target["boxes"] / target["scale_xy"].repeat(2)
    torch.testing.assert_close(original, torch.from_numpy(rec.boxes), atol=1e-3, rtol=0)


def test_flip_mirrors_content_and_boxes():
    rec = record(200, 100)
    rec.image.paste((255, 255, 255), (20, 10, 60, 50))  # the box, painted white
    image, target = Transform(400, "letterbox", flip_prob=1.0)(rec, np.random.default_rng(0))
    torch.testing.assert_close(target["boxes"], torch.tensor([[280.0, 20.0, 360.0, 100.0]]))
    x0, y0, x1, y1 = target["boxes"][0].int().tolist()
    assert (image[:, y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] == 255).all()
    assert (image[:, :, 400 - 1] == 0).all()  # padding stays right


def test_boxes_are_clipped_and_degenerate_ones_dropped():
    boxes = ((-10.0, -5.0, 50.0, 40.0), (190.0, 20.0, 260.0, 60.0), (210.0, 10.0, 250.0, 30.0))
    reports = []
    transform = Transform(200, "letterbox")
    _, target = transform(
        record(200, 100, boxes=boxes, labels=(1, 2, 3)), report=lambda *a: reports.append(a)
    )
    torch.testing.assert_close(
        target["boxes"], torch.tensor([[0.0, 0.0, 50.0, 40.0], [190.0, 20.0, 200.0, 60.0]])
    )
    assert target["labels"].tolist() == [1, 2]
    assert reports == [
        ("boxes outside the image clipped", 7, "3 of 3"),
        ("degenerate boxes dropped", 7, "1 of 3"),
    ]


def test_no_boxes_gives_empty_targets_of_the_right_shape():
    _, target = Transform(64)(record(boxes=(), labels=()))
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_any_image_mode_becomes_rgb(mode):
    image, _ = Transform(64)(record(mode=mode))
    assert image.shape == (3, 64, 64)


def test_a_16_bit_greyscale_png_is_scaled_to_8_bits_not_clipped():
    """PIL's own convert("RGB") would make 98% of such a photo white."""
    levels = np.array([[0, 257, 32896, 65535]] * 4, dtype=np.uint16)  # 0, 1, 128, 255 in 8 bits
    buffer = io.BytesIO()
    Image.fromarray(levels).save(buffer, format="PNG")
    assert Image.open(io.BytesIO(buffer.getvalue())).mode in ("I;16", "I")
    transform = Transform(4, resize="stretch")
    image, _ = transform(Record(buffer.getvalue(), np.zeros((0, 4)), np.zeros(0), 1))
    assert image[:, 0].tolist() == [[0, 1, 128, 255]] * 3


def test_encoded_bytes_are_decoded():
    buffer = io.BytesIO()
    Image.new("RGB", (50, 40), (10, 20, 30)).save(buffer, format="JPEG")
    image, target = Transform(100)(Record(buffer.getvalue(), np.zeros((0, 4)), np.zeros(0), 1))
    assert target["orig_size"] == (40, 50)
    assert abs(int(image[2, 10, 10]) - 30) < 5


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"size": 0}, "image_size"), ({"resize": "crop"}, "resize"), ({"flip_prob": 2}, "flip_prob")],
)
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key):
        Transform(**kwargs)


def test_collate_stacks_images_and_keeps_targets_as_a_list():
    samples = [Transform(32)(record()) for _ in range(3)]
    batch = collate(samples)
    assert batch["images"].shape == (3, 3, 32, 32)
    assert len(batch["targets"]) == 3 and batch["targets"][0]["boxes"].dtype == torch.float32


@pytest.mark.parametrize(("width", "height"), [(333, 217), (217, 333), (640, 427), (100, 100)])
def test_batches_say_where_each_images_content_ends(width, height):
    rec = record(width, height)
    rec.image.paste((255, 255, 255), (0, 0, width, height))
    batch = collate([Transform(256, "letterbox")(rec), Transform(256, "stretch")(rec)])
    (h, w), full = batch["image_sizes"].tolist()
    assert full == [256, 256]
    image = batch["images"][0]
    assert (image[:, :h, :w] == 255).all()  # content up to there, padding beyond
    assert (image[:, h:] == 0).all() and (image[:, :, w:] == 0).all()
