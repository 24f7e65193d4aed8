"""Boxes drawn on images: a sample's labels as training sees them."""

import torch

from frcnn.visualization.drawing import (
    GROUND_TRUTH,
    class_colour,
    draw_detections,
    draw_labels,
    label_grid,
    line_width,
)


def test_labels_are_drawn_in_their_class_colour_with_the_image_kept_elsewhere():
    image = torch.zeros(3, 64, 96, dtype=torch.uint8)
    target = {"boxes": torch.tensor([[10.0, 8.0, 50.0, 40.0]]), "labels": torch.tensor([3])}
    drawn = draw_labels(image, target, ["a", "b", "widget"])
    colour = torch.tensor(class_colour(3), dtype=torch.uint8)
    assert torch.equal(drawn[:, 40, 30], colour)  # the box's bottom edge
    assert not drawn[:, 60:, :].any() and not drawn[:, 20, 20].any()  # outside, inside
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    assert torch.equal(draw_labels(image, empty), image)


def test_a_grid_has_four_samples_a_row():
    samples = [
        (
            torch.zeros(3, 32, 32, dtype=torch.uint8),
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)},
        )
    ] * 6
    grid = label_grid(samples)
    assert grid.shape == (3, 2 * (32 + 4) + 4, 4 * (32 + 4) + 4)


def test_ground_truth_has_a_colour_no_class_comes_near():
    """Every class colour has a channel at 0: white is a full 255 away from each (green was
    within a few levels of some classes')."""
    for label in range(1, 1001):
        distance = max(abs(a - b) for a, b in zip(class_colour(label), GROUND_TRUTH, strict=True))
        assert distance == 255, label


def test_label_text_grows_with_the_image_as_its_lines_do():
    """A detection's name over its box: the rows that hold its text, 10 px up to 640 px and
    six times that on a 12 MP photo (PIL's default font stayed 10 px: 3 px when a 4000 px
    photo is shown 1000 px wide)."""
    heights = []
    for width, height in ((640, 480), (4000, 3000)):
        image = torch.zeros(3, height, width, dtype=torch.uint8)
        box = torch.tensor([[width * 0.1, height * 0.1, width * 0.6, height * 0.6]])
        detection = {"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([2])}
        drawn = draw_detections(image, detection, class_names=["a", "gadget"])
        x0, y0, x1, y1 = (int(v) for v in box[0])
        edge = line_width(image) + 1
        inside = drawn[:, y0 + edge : y1 - edge, x0 + edge : x1 - edge]  # within the lines
        rows = inside.any(0).any(1).nonzero().squeeze(1)  # the text's, below the top line
        heights.append(int(rows.max() - rows.min()) + 1 if len(rows) else 0)
    assert 5 <= heights[0] <= 12 and 5.5 * heights[0] <= heights[1] <= 6.5 * heights[0], heights
