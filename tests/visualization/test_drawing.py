"""Boxes drawn on images: a sample's labels as training sees them."""

import torch

from frcnn.visualization.drawing import GROUND_TRUTH, class_colour, draw_labels, label_grid


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
