"""Boxes drawn on images: a sample's labels as training sees them."""

import torch
from torchvision.utils import draw_bounding_boxes

from frcnn.visualization.drawing import (
    GROUND_TRUTH,
    class_colour,
    draw_detections,
    draw_labels,
    label_grid,
    line_width,
    named_boxes,
    text_colour,
)
from frcnn.visualization.fonts import DEJAVU_SANS


def test_labels_are_drawn_in_their_class_colour_with_the_image_kept_elsewhere():
    image = torch.zeros(3, 64, 96, dtype=torch.uint8)
    target = {"boxes": torch.tensor([[10.0, 8.0, 50.0, 40.0]]), "labels": torch.tensor([3])}
    drawn = draw_labels(image, target, ["a", "b", "widget"])
    colour = torch.tensor(class_colour(3), dtype=torch.uint8)
    assert torch.equal(drawn[:, 40, 30], colour)  # the box's bottom edge
    assert torch.equal(drawn[:, 12, 12], colour)  # the name's patch, inside the corner
    assert not drawn[:, 60:, :].any() and not drawn[:, 32, 30].any()  # outside, inside
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    assert torch.equal(draw_labels(image, empty), image)


def test_ignored_regions_are_drawn_thin_and_white_beside_the_boxes():
    """Crowds (and VOC's difficult objects) travel as crowd_boxes: not trained on, drawn so
    that a user sees which regions the labels leave out."""
    image = torch.zeros(3, 64, 96, dtype=torch.uint8)
    target = {
        "boxes": torch.tensor([[10.0, 8.0, 50.0, 40.0]]),
        "labels": torch.tensor([3]),
        "crowd_boxes": torch.tensor([[60.0, 20.0, 90.0, 60.0]]),
    }
    drawn = draw_labels(image, target, ["a", "b", "widget"])
    assert drawn[:, 60, 75].tolist() == list(GROUND_TRUTH)  # the region's bottom edge
    assert not drawn[:, 40, 75].any()  # inside it
    assert drawn[:, 40, 30].tolist() == list(class_colour(3))  # the box as before
    alone = draw_labels(
        image, {**target, "boxes": torch.zeros(0, 4), "labels": target["labels"][:0]}
    )
    assert alone[:, 60, 75].tolist() == list(GROUND_TRUTH)


def test_a_name_reads_on_an_object_and_a_background_of_its_class_colour():
    """The text, black or white, on a patch of the class colour (in the class colour alone, it
    vanished there): a light colour gets black, a dark one white."""
    for label, ink in ((2, (0, 0, 0)), (1, (255, 255, 255))):  # yellow-green, blue
        colour = torch.tensor(class_colour(label), dtype=torch.uint8)
        image = colour[:, None, None].expand(3, 64, 96).clone()  # all of the class's colour
        target = {"boxes": torch.tensor([[4.0, 4.0, 90.0, 60.0]]), "labels": torch.tensor([label])}
        drawn = draw_labels(image, target, ["gadget", "widget"])
        near = (drawn.int() - torch.tensor(ink)[:, None, None]).abs() < 100  # antialiased
        text = near.all(0)
        rows, columns = text.nonzero().unbind(1)
        assert text.sum() >= 20, (label, int(text.sum()))  # the strokes of its name
        assert rows.min() >= 6 and rows.max() <= 22 and 6 <= columns.min() < columns.max() < 60
        assert text_colour(class_colour(label)) == ink


def test_a_name_sits_above_its_box_where_the_image_has_room_else_inside():
    """Its patch's rows: against the top line, above it (the object stays in sight) or, at the
    image's top, below it."""
    image = torch.zeros(3, 96, 96, dtype=torch.uint8)
    width = line_width(image)
    for top in (40, 2):
        target = {"boxes": torch.tensor([[10.0, top, 80.0, 90.0]]), "labels": torch.tensor([2])}
        drawn = draw_labels(image, target, ["a", "widget"])
        lines = named_boxes(image, target["boxes"], [""], target["labels"], DEJAVU_SANS)
        colour = torch.tensor(class_colour(2), dtype=torch.uint8)[:, None, None]
        patch = (drawn == colour).all(0) & (lines == 0).all(0)  # the box's lines left out
        rows = patch.any(1).nonzero().squeeze(1)
        assert 8 <= len(rows) <= 14 and rows[-1] - rows[0] == len(rows) - 1, rows
        if top == 40:  # its last row touches the line
            assert rows[-1] == top - 1, rows
        else:  # its first row is under the line
            assert rows[0] == top + width, rows
    assert not drawn[:, 2 + width + 14 : 88, 12:78].any()  # nothing else inside


def test_a_name_the_right_edge_would_cut_moves_left_whole_into_the_image():
    """A box at the image's right edge: its patch ends at the last column, as wide as where the
    box leaves room; a name wider than the image starts at its first column."""
    image = torch.zeros(3, 96, 160, dtype=torch.uint8)
    boxes, labels = torch.tensor([[130.0, 40.0, 159.0, 90.0]]), torch.tensor([2])
    colour = torch.tensor(class_colour(2), dtype=torch.uint8)[:, None, None]
    lines = named_boxes(image, boxes, [""], labels, DEJAVU_SANS)
    columns = {}
    for name in ("a long class name", "a long class name " * 4):
        drawn = named_boxes(image, boxes, [name], labels, DEJAVU_SANS)
        patch = (drawn == colour).all(0)[:40] & (lines == 0).all(0)[:40]  # above the box
        columns[name] = patch.any(0).nonzero().squeeze(1)
    roomy = torch.zeros(3, 96, 400, dtype=torch.uint8)  # room right of the box
    roomy = named_boxes(roomy, boxes, ["a long class name"], labels, DEJAVU_SANS)
    wide = (roomy == colour).all(0)[:40].any(0).nonzero().squeeze(1)
    short, long = columns.values()
    assert wide[0] == 130 and short[-1] == 159 and len(short) == len(wide) > 30, (short, wide)
    assert long[0] == 0 and long[-1] == 159, long


def test_boxes_are_drawn_as_torchvision_draws_them():
    image = torch.randint(0, 256, (3, 120, 160), dtype=torch.uint8)
    boxes = torch.tensor([[10.7, 8.2, 90.5, 70.9], [50.0, 40.0, 150.0, 110.0]])
    labels = torch.tensor([3, 7])
    drawn = named_boxes(image, boxes, ["", ""], labels, DEJAVU_SANS)  # (no names: no patches)
    colours = [class_colour(int(c)) for c in labels]
    expected = draw_bounding_boxes(image, boxes, colors=colours, width=line_width(image))
    assert torch.equal(drawn, expected)


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
    """A detection's name over its box: the rows that hold its text (black, on class 2's
    yellow-green), 10 px up to 640 px and six times that on a 12 MP photo (PIL's default font
    stayed 10 px: 3 px when a 4000 px photo is shown 1000 px wide)."""
    heights = []
    for width, height in ((640, 480), (4000, 3000)):
        image = torch.full((3, height, width), 128, dtype=torch.uint8)
        box = torch.tensor([[width * 0.1, height * 0.1, width * 0.6, height * 0.6]])
        detection = {"boxes": box, "scores": torch.tensor([0.9]), "labels": torch.tensor([2])}
        drawn = draw_detections(image, detection, class_names=["a", "gadget"])
        rows = (drawn < 60).all(0).any(1).nonzero().squeeze(1)  # the text's: all else is lighter
        heights.append(int(rows.max() - rows.min()) + 1 if len(rows) else 0)
    assert 5 <= heights[0] <= 12 and 5.5 * heights[0] <= heights[1] <= 6.5 * heights[0], heights
