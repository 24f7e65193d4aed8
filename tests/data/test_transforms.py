import io

import numpy as np
import pytest
import torch
from PIL import Image

from frcnn.data.transforms import Record, Transform, array_image, collate, decoded


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


@pytest.mark.parametrize(
    ("width", "height", "size"), [(640, 480, 400), (333, 217, 256), (90, 61, 400)]
)
def test_resized_content_is_pils_bilinear_resize_within_one_grey_level(width, height, size):
    """torch's antialiased bilinear resize against PIL's BILINEAR (what the transform used
    before it, at a quarter of the speed): shrinking and enlarging, on a photo-like image."""
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((width, height), Image.BICUBIC), dtype=np.int16)
    noisy = np.clip(smooth + rng.integers(-30, 30, smooth.shape), 0, 255).astype(np.uint8)
    rec = record(width, height)
    rec.image = Image.fromarray(noisy)
    image, target = Transform(size, "letterbox")(rec)
    new_w, new_h = (target["scale_xy"] * torch.tensor([width, height])).round().int().tolist()
    expected = np.asarray(rec.image.resize((new_w, new_h), Image.BILINEAR))
    got = image[:, :new_h, :new_w].permute(1, 2, 0).numpy()
    difference = np.abs(got.astype(int) - expected)
    assert difference.max() <= 1 and difference.mean() < 0.3
    assert (image[:, new_h:] == 0).all() and (image[:, :, new_w:] == 0).all()


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
    ("transform", "width", "height", "times"),
    [
        (Transform(400), 4000, 3000, 8),  # a phone photo: 500 x 375, its long side above 400
        (Transform(400, scale_jitter=(0.1, 2.0)), 4000, 3000, 4),  # up to 800 px
        (Transform(400, "stretch"), 4000, 3000, 4),  # both sides at least 400: the short one
        (Transform(400), 4002, 3000, 2),  # 8, 4 do not divide 4002: the same ground at 1/2 only
        (Transform(400), 4001, 3000, 1),
        (Transform(400), 640, 480, 1),  # COCO's: decoded whole
    ],
)
def test_a_large_jpeg_is_decoded_as_small_as_the_resize_allows(transform, width, height, times):
    assert transform.reduction(width, height) == times


def noisy_jpeg(width: int, height: int, box) -> bytes:
    """A smooth random picture with a white box at `box` (x0, y0, x1, y1), as a JPEG."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 200, (height // 100, width // 100, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    image.paste((255, 255, 255), box)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def test_a_jpeg_decoded_smaller_gives_the_same_targets_and_nearly_the_same_pixels():
    """A 3200 x 2400 photo for a 400 px input is decoded at 1/8 (400 x 300): the same target,
    and against the whole decode (PIL's pixels, given decoded) within a grey level or two on
    average, the box's pixels in the same place."""
    box = (800, 600, 1600, 1400)  # -> 100, 75, 200, 175 at 400 px
    data = noisy_jpeg(3200, 2400, box)
    boxes, labels = np.array([box], np.float32), np.array([1])
    transform = Transform(400)
    small, small_target = transform(Record(data, boxes, labels, 3))
    image, size = decoded(Record(data, boxes, labels, 3), reduction=transform.reduction)
    assert image.size == (400, 300) and size == (3200, 2400)
    whole = Image.open(io.BytesIO(data))
    whole.load()  # (decoded: no draft)
    full, full_target = transform(Record(whole, boxes, labels, 3))
    for key in ("boxes", "labels", "scale_xy"):
        torch.testing.assert_close(small_target[key], full_target[key])
    assert small_target["orig_size"] == full_target["orig_size"] == (2400, 3200)
    difference = (small.float() - full.float()).abs()
    assert difference.mean() < 2 and difference.max() < 64
    white = (small.min(0).values > 235) & (full.min(0).values > 235)
    assert white[80:170, 105:195].all()  # the box, inside its edges, in both
    assert not white[:, :95].any() and not white[:, 205:].any()


def test_a_large_phone_photo_decoded_smaller_is_still_turned_upright():
    """EXIF orientation 6 on a 1600 x 800 JPEG decoded at 1/8 for a 200 px input: upright,
    its size the turned one, the block where a viewer shows it."""
    stored = Image.new("RGB", (1600, 800), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 400, 200))  # -> upright x 600..800, y 0..400
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif, quality=95)
    record = Record(buffer.getvalue(), np.array([[600.0, 0.0, 800.0, 400.0]]), np.array([1]), 7)
    transform = Transform(200)
    assert transform.reduction(800, 1600) == 8
    image, target = transform(record)
    assert target["orig_size"] == (1600, 800)
    torch.testing.assert_close(target["boxes"], torch.tensor([[75.0, 0.0, 100.0, 50.0]]))
    assert red(image, 90, 20) and not red(image, 10, 10) and not red(image, 90, 120)


@pytest.mark.parametrize(
    ("kwargs", "told"),
    [
        ({"size": 0}, r"data.image_size=0: must lie in \[1, inf\)"),
        ({"size": True}, r"data.image_size=True: must be an integer in \[1, inf\)"),
        ({"resize": "crop"}, r"data.resize='crop': letterbox or stretch"),
        ({"flip_prob": 2}, r"data.flip_prob=2: must lie in \[0, 1\]"),
        # Hydra reads `flip_prob=yes` as a string: a TypeError before
        ({"flip_prob": "yes"}, r"data.flip_prob='yes': must be a number in \[0, 1\]"),
        ({"scale_jitter": (1.2, 0.8)}, r"data.scale_jitter=\[1.2,0.8\]: .* 0 < low <= high, e.g."),
        ({"scale_jitter": (0.0, 1.0)}, r"data.scale_jitter=\[0.0,1.0\]: must be \[low, high\]"),
        ({"scale_jitter": (0.5,)}, r"data.scale_jitter=\[0.5\]: must be \[low, high\]"),
        # a bare number (a TypeError before), an empty list (no jitter before, unasked)
        ({"scale_jitter": 0.5}, r"data.scale_jitter=0.5: must be \[low, high\]"),
        ({"scale_jitter": []}, r"data.scale_jitter=\[\]: must be \[low, high\]"),
        ({"scale_jitter": ["a", "b"]}, r"data.scale_jitter=\[a,b\]: must be \[low, high\]"),
        ({"min_visible": 1.5}, r"data.min_visible=1.5: must lie in \[0, 1\]"),
    ],
)
def test_bad_settings_name_the_key_as_typed(kwargs, told):
    with pytest.raises(ValueError, match="^" + told):
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


def scene():
    """A 300 x 200 photo with three white objects (one near each of two corners, one in the
    middle), a crowd region over the middle one and mask areas of half each box."""
    image = Image.new("RGB", (300, 200))
    boxes = [(5.0, 5.0, 65.0, 45.0), (120.0, 70.0, 180.0, 130.0), (240.0, 150.0, 295.0, 195.0)]
    for x0, y0, x1, y1 in boxes:
        image.paste((255, 255, 255), (int(x0), int(y0), int(x1), int(y1)))
    boxes.append((100.0, 60.0, 200.0, 140.0))
    area = np.array([(x1 - x0) * (y1 - y0) / 2 for x0, y0, x1, y1 in boxes], dtype=np.float32)
    return Record(image, np.array(boxes, dtype=np.float32), np.array([1, 2, 3, 2]), 9,
                  iscrowd=np.array([False, False, False, True]), area=area)  # fmt: skip


@pytest.mark.parametrize("seed", range(12))
def test_scale_jitter_boxes_land_on_their_objects_and_stay_inside_the_content(seed):
    transform = Transform(128, "letterbox", flip_prob=0.5, scale_jitter=(0.3, 2.0))
    image, target = transform(scene(), np.random.default_rng(seed))
    height, width = collate([(image, target)])["image_sizes"][0].tolist()
    assert 0 < height <= 128 and 0 < width <= 128
    assert image[:, height:].eq(0).all() and image[:, :, width:].eq(0).all()  # padding
    white = image[0] > 127
    for x0, y0, x1, y1 in target["boxes"].tolist():
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        inside = white[round(y0) : round(y1), round(x0) : round(x1)]
        assert inside.float().mean() > 0.85  # the box covers its object's pixels...
        ring = white[max(0, round(y0) - 2) : round(y1) + 2, max(0, round(x0) - 2) : round(x1) + 2]
        assert ring.sum() - inside.sum() <= 2 * (ring.shape[0] + ring.shape[1])  # ...tightly
    # at most the scene's objects and its crowd region
    assert len(target["boxes"]) <= 3 and len(target["crowd_boxes"]) <= 1


def test_scale_jitter_drops_boxes_mostly_cropped_and_scales_their_areas():
    """A factor of 2 on a 400 px letterbox of a 300 x 200 photo is 800 x 533: a 400 x 400 crop
    of it keeps a quarter of the width; the draws decide where."""
    seen = set()
    for seed in range(40):
        _, target = Transform(400, scale_jitter=(2.0, 2.0), min_visible=0.5)(
            scene(), np.random.default_rng(seed)
        )
        assert target["scale_xy"].tolist() == pytest.approx([800 / 300, 533 / 200], abs=1e-6)
        full = (scene().boxes[:, 2:] - scene().boxes[:, :2]).prod(1) * (800 / 300) * (533 / 200)
        for boxes, areas, indices in (
            (target["boxes"], target["area"], [int(c) - 1 for c in target["labels"]]),
            (target["crowd_boxes"], target["crowd_area"], [3] * len(target["crowd_boxes"])),
        ):
            kept = (boxes[:, 2:] - boxes[:, :2]).prod(1)
            for box_area, area, index in zip(kept.tolist(), areas.tolist(), indices, strict=True):
                share = box_area / full[index]
                assert share >= 0.5 - 1e-6  # min_visible
                # the mask area (half the box) shrinks with the share of the box that stays
                assert area == pytest.approx(scene().area[index] * share, rel=1e-3)
        seen.add(len(target["boxes"]))
    assert len(seen) > 1  # some crops keep more objects than others


def test_scale_jitter_is_the_same_for_the_same_draws():
    transform = Transform(128, flip_prob=0.5, scale_jitter=(0.5, 1.5))
    first = transform(scene(), np.random.default_rng(3))
    again = transform(scene(), np.random.default_rng(3))
    other = transform(scene(), np.random.default_rng(4))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])
    assert not torch.equal(first[0], other[0])


def phone_photo(orientation: int = 6, format: str = "JPEG") -> bytes:
    """A JPEG (or HEIF, as iPhones store photos) stored 80 x 40 (width x height) with a red
    block at x 0..20, y 0..10 of the stored pixels and EXIF orientation 6: a viewer turns it
    90 degrees clockwise, to 40 x 80, the block then at x 30..40, y 0..20."""

    stored = Image.new("RGB", (80, 40), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 10))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, format=format, exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


def red(image, x, y) -> bool:
    r, g, b = (int(v) for v in image[:, y, x])
    return r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("format", ["JPEG", "HEIF"])
@pytest.mark.parametrize("recorded", [None, (40, 80)])
def test_a_phone_photo_is_read_upright_as_predict_reads_it(recorded, format):
    """No size recorded, or the upright one: the pixels (and so the boxes) are upright. An
    iPhone's HEIC (the `heic` extra's plugin turns it as it opens it) is not turned twice."""
    photo = phone_photo(format=format)
    record = Record(photo, np.array([[30.0, 0.0, 40.0, 20.0]]), np.array([1]), 7, size=recorded)
    image, target = Transform(80)(record)
    assert target["orig_size"] == (80, 40)
    assert red(image, 37, 3) and not red(image, 3, 3)  # the block, upright, and not where stored


def test_annotations_of_the_stored_pixels_keep_them_and_are_counted():
    """The annotation file records the stored 80 x 40: its boxes were drawn on those pixels."""
    reports = []
    record = Record(
        phone_photo(), np.array([[0.0, 0.0, 20.0, 10.0]]), np.array([1]), 7, size=(80, 40)
    )
    image, target = Transform(80)(record, report=lambda *args: reports.append(args))
    assert target["orig_size"] == (40, 80) and red(image, 3, 3)
    assert reports == [("EXIF orientation left out (the annotation's size is the stored one)", 7)]


def test_an_array_or_a_tensor_is_an_image_only_in_uint8_and_its_own_channel_order():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    for given in (rgb, chw, rgb[..., ::-1][..., ::-1]):  # (the last a view with strides)
        assert np.array_equal(np.asarray(array_image(given, "it")), rgb)
    assert array_image(rgb[..., 0], "it").mode == "L" and array_image(chw[:1], "it").mode == "L"
    assert array_image(np.dstack([rgb, rgb[..., :1]]), "it").mode == "RGBA"
    for refused, shown in [
        (rgb / 255.0, r"ndarray float64 \(5, 7, 3\)"),  # pixels in 0..1
        (np.ascontiguousarray(rgb.transpose(2, 0, 1)), r"ndarray uint8 \(3, 5, 7\)"),
        (chw.float() / 255, r"Tensor torch.float32 \(3, 5, 7\)"),  # torchvision's convention
        (chw.permute(1, 2, 0), r"Tensor torch.uint8 \(5, 7, 3\)"),
        ([[0, 1]], r"list;"),
    ]:
        hint = r"BGR: image\[\.\.\., ::-1\]"
        with pytest.raises(TypeError, match=rf"^it: its image is a {shown}.*{hint}"):
            array_image(refused, "it")
