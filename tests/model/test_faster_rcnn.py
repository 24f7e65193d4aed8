import pytest
import torch

from frcnn.model import FasterRCNN

SMALL = dict(
    num_classes=3,
    backbone=dict(depth=18, frozen="none"),
    fpn_channels=32,
    rpn=dict(post_nms_top_n_train=100, post_nms_top_n_test=50),
    roi_heads=dict(batch_size_per_image=32, representation_size=64),
)
EMPTY = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FasterRCNN(**SMALL)


def batch():
    images = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)
    targets = [
        {
            "boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0], [40.0, 30.0, 90.0, 70.0]]),
            "labels": torch.tensor([1, 3]),
        },
        EMPTY,
    ]
    return images, targets


def test_training_returns_exactly_the_four_losses(model):
    images, targets = batch()
    losses = model.train()(images, targets)
    assert set(losses) == {"rpn_cls", "rpn_box", "roi_cls", "roi_box"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.zero_grad()


def test_a_batch_without_any_box_trains(model):
    images, _ = batch()
    losses = model.train()(images, [EMPTY, EMPTY])
    assert torch.isfinite(sum(losses.values()))
    assert losses["rpn_box"] == 0 and losses["roi_box"] == 0


def test_eval_returns_detections_in_the_image(model):
    images, _ = batch()
    with torch.no_grad():
        detections = model.eval()(images)
    assert len(detections) == 2
    for det in detections:
        assert set(det) == {"boxes", "scores", "labels"}
        assert det["boxes"].shape[1:] == (4,) and len(det["boxes"]) <= 100
        assert (det["boxes"] >= 0).all() and (det["boxes"] <= 96).all()
        assert ((det["labels"] >= 1) & (det["labels"] <= 3)).all()


def test_losses_and_detections_in_one_pass(model):
    images, targets = batch()
    model.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        losses, detections = model.forward_with_losses(images, targets)
        alone = model(images)
    assert set(losses) == {"rpn_cls", "rpn_box", "roi_cls", "roi_box"}
    for a, b in zip(detections, alone, strict=True):
        torch.testing.assert_close(a["boxes"], b["boxes"])


def test_uint8_and_float_inputs_agree(model):
    images, _ = batch()
    with torch.no_grad():
        a = model.eval()(images)
        b = model(images.float() / 255)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x["scores"], y["scores"])


def test_a_list_of_images_of_any_sizes_detects_as_their_padded_batch_with_its_sizes(model):
    """torchvision's detectors take a list of (3, H, W) images: so does this one, padding them
    into one batch whose image_sizes are theirs (a wrong size would move the clipping)."""
    images, targets = batch()
    small = images[1, :, :64, :80]
    padded = images.clone()
    padded[1, :, 64:] = padded[1, :, :, 80:] = 0
    sizes = torch.tensor([[96, 96], [64, 80]])
    model.eval()
    with torch.no_grad():
        from_list = model([images[0], small])
        from_batch = model(padded, image_sizes=sizes)
        torch.manual_seed(1)
        listed_losses, _ = model.forward_with_losses([images[0], small], targets)
        torch.manual_seed(1)
        batch_losses, _ = model.forward_with_losses(padded, targets, image_sizes=sizes)
    for a, b in zip(from_list, from_batch, strict=True):
        torch.testing.assert_close(a, b)
    assert (from_list[1]["boxes"][:, 1::2] <= 64).all() and (from_list[1]["boxes"] <= 80).all()
    torch.testing.assert_close(listed_losses, batch_losses)
    losses = model.train()([images[0], small], targets)
    assert torch.isfinite(sum(losses.values()))


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.rand(3, 96, 96), r"\(B, 3, H, W\) RGB; got \(3, 96, 96\).*images\[None\]"),
        (torch.rand(1, 96, 96, 3), r"got \(1, 96, 96, 3\).*movedim\(-1, -3\)"),
        (torch.rand(1, 1, 96, 96), r"gray\? images.expand\(-1, 3, -1, -1\)"),
        (torch.rand(1, 4, 96, 96), r"got \(1, 4, 96, 96\) torch.float32$"),
        ([torch.rand(96, 96)], r"images\[0\]: \(3, H, W\) RGB; got \(96, 96\)"),
        ([torch.rand(1, 96, 96)], r"gray\? images.expand\(3, -1, -1\)"),
        # int64 pixels would be read as 0..1 floats: every image nearly white
        (torch.randint(0, 256, (1, 3, 96, 96)), r"uint8 \(0..255\) or float.*torch.int64"),
        (torch.zeros(0, 3, 96, 96), "an empty batch"),
        ([], "a list of one or more images"),
        ([torch.rand(3, 96, 96), torch.zeros(3, 96, 96, dtype=torch.uint8)], "of one type"),
        (torch.rand(3, 96, 96).numpy(), "a \\(B, 3, H, W\\) tensor; got ndarray"),
    ],
)
def test_images_of_another_shape_or_type_are_refused_saying_how_to_mend_them(
    model, images, message
):
    with pytest.raises((ValueError, TypeError), match=message):
        model.eval()(images)


def test_sizes_and_targets_that_do_not_fit_the_batch_are_refused(model):
    """Broadcasting would take one image's size for all, or pair boxes with other labels."""
    images, targets = batch()
    model.eval()
    with pytest.raises(ValueError, match=r"image_sizes: \(B, 2\).* 2 images; got shape \(1, 2\)"):
        model(images, image_sizes=torch.tensor([[96, 96]]))
    with pytest.raises(ValueError, match="a list of images brings its own"):
        model(list(images), image_sizes=torch.tensor([[96, 96], [96, 96]]))
    assert len(model(images, image_sizes=[[96, 96], [64, 80]])) == 2  # a list of sizes is taken
    with pytest.raises(ValueError, match="targets: one per image, 2; got 1"):
        model.train()(images, targets[:1])
    with pytest.raises(ValueError, match=r'targets\[1\]: a dict with "boxes" and "labels"; got'):
        model(images, [targets[0], {"boxes": torch.zeros(0, 4)}])
    wrong = [targets[0], {"boxes": torch.zeros(4, 5), "labels": torch.ones(5, dtype=torch.long)}]
    with pytest.raises(ValueError, match=r"got shapes \(4, 5\) and \(5,\)"):
        model(images, wrong)  # reshaped to (5, 4), they would train as five other boxes
    with pytest.raises(ValueError, match=r"got shapes \(2, 4\) and \(1,\)"):
        model(images, [{**targets[0], "labels": torch.tensor([1])}, EMPTY])
    one_box = {"boxes": torch.tensor([1.0, 2, 30, 40]), "labels": torch.tensor(2)}
    assert torch.isfinite(sum(model(images, [one_box, {"boxes": [], "labels": []}]).values()))


def test_training_without_targets_is_an_error(model):
    with pytest.raises(ValueError, match="targets"):
        model.train()(batch()[0])


def test_anchor_sets_with_unequal_counts_per_level_are_refused():
    with pytest.raises(ValueError, match="anchors"):
        FasterRCNN(
            backbone=dict(depth=18), anchors=dict(sizes=((32,), (64, 80), (128,), (256,), (512,)))
        )


def test_an_anchor_set_for_another_number_of_levels_is_refused_at_start_up():
    one_level = dict(sizes=((32,),), aspect_ratios=((0.5, 1.0, 2.0),), strides=(4,))
    with pytest.raises(ValueError, match=r"model.anchors: 1 levels .* the FPN has 5 \(P2..P6\)"):
        FasterRCNN(backbone=dict(depth=18), anchors=one_level)


def test_a_model_whose_rpn_proposes_nothing_detects_nothing():
    model = FasterRCNN(
        num_classes=3, backbone=dict(depth=18), fpn_channels=32, rpn=dict(min_size=10_000.0)
    ).eval()
    with torch.no_grad():
        detections = model(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    assert [len(d["boxes"]) for d in detections] == [0, 0]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TRITON = {"nms_calls": "triton"}  # a GPU's (elsewhere it takes the calls per image)


@pytest.mark.parametrize(
    "switch",
    [
        {"nms_calls": "batch"},
        pytest.param(TRITON, marks=CUDA),
        {"roi_heads": {"pooler": "torchvision"}},
        "channels_last",
    ],
    ids=str,
)
def test_the_gpu_speed_switches_compute_the_same_losses_and_detections(switch):
    """`model.nms_calls=batch|triton`, `model.roi_heads.pooler=torchvision` and channels-last
    memory (`module.channels_last`) against the calls per image and the other defaults, same
    weights: what only a GPU can decide must not change the results (channels-last: other
    convolution kernels, float rounding). (Not against `auto`: on a GPU it is triton.)"""
    device = "cuda" if switch == TRITON else "cpu"
    torch.manual_seed(0)
    default = FasterRCNN(**SMALL, nms_calls="image").to(device)
    other = dict(SMALL, **switch) if isinstance(switch, dict) else SMALL
    if "roi_heads" in switch:
        other["roi_heads"] = {**SMALL["roi_heads"], **switch["roi_heads"]}
    switched = FasterRCNN(**other).to(device)
    switched.load_state_dict(default.state_dict())
    images, targets = batch()
    images = images.to(device)
    targets = [{key: value.to(device) for key, value in t.items()} for t in targets]
    inputs = [images, images]
    if switch == "channels_last":
        switched.to(memory_format=torch.channels_last)
        inputs[1] = images.contiguous(memory_format=torch.channels_last)
    tolerance = dict(rtol=1e-4, atol=1e-4) if switch == "channels_last" else {}
    results = []
    for model, x in zip((default, switched), inputs, strict=True):
        torch.manual_seed(1)  # the samplers draw the same boxes
        losses = model.train()(x, targets)
        results.append((losses, model.eval()(x)))
    (losses, detections), (other_losses, other_detections) = results
    for name in losses:
        torch.testing.assert_close(other_losses[name], losses[name], **tolerance)
    for mine, theirs in zip(detections, other_detections, strict=True):
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(theirs[key], mine[key], **tolerance)


def test_triton_nms_without_a_usable_triton_says_so_and_calls_per_image(monkeypatch, caplog):
    import frcnn.model.faster_rcnn as module

    monkeypatch.setattr(module, "triton_missing", lambda: "triton 3.1.0 is older than 3.6")
    model = FasterRCNN(**SMALL, nms_calls="triton")
    assert model.nms_calls == model.rpn.nms_calls == model.roi_heads.nms_calls == "image"
    assert "model.nms_calls=triton: triton 3.1.0 is older than 3.6" in caplog.text


@pytest.mark.parametrize("missing", [None, "no triton package"])
def test_auto_nms_takes_triton_where_it_runs_and_else_the_calls_per_image_quietly(
    monkeypatch, caplog, missing
):
    """`model.nms_calls=auto`, the default: nothing to say where Triton cannot run (a CPU
    machine, Windows), as it was not asked for."""
    import frcnn.model.faster_rcnn as module

    monkeypatch.setattr(module, "triton_missing", lambda: missing)
    model = FasterRCNN(**SMALL)
    expected = "image" if missing else "triton"
    assert model.nms_calls == model.rpn.nms_calls == model.roi_heads.nms_calls == expected
    assert "nms_calls" not in caplog.text
