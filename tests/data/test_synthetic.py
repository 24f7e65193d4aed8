import numpy as np
import pytest
import torch

from frcnn.data.synthetic import PALETTE, SyntheticShapes, class_names, class_style, draw_sample
from frcnn.data.transforms import Transform


def test_same_seed_same_samples_and_other_seeds_differ():
    a, b, c = draw_sample(0, 5, 6), draw_sample(0, 5, 6), draw_sample(1, 5, 6)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


@pytest.mark.parametrize("index", range(20))
def test_boxes_lie_exactly_on_the_drawn_objects(index):
    rec = draw_sample(3, index, 9)
    pixels = np.asarray(rec.image).astype(int)
    height, width = pixels.shape[:2]
    assert 1 <= len(rec.boxes) <= 6
    for box, label in zip(rec.boxes.astype(int), rec.labels, strict=True):
        shape, colour = class_style(int(label))
        x0, y0, x1, y1 = box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        mask = np.abs(pixels - colour).sum(-1) == 0
        # the centre of the bottom edge is inside every shape (triangle base, ellipse, rectangle)
        assert mask[y1 - 1, (x0 + x1) // 2] or _covered(rec, box)
        # nothing of the object's colour just outside the box on its own rows and columns
        inside = mask[y0:y1, x0:x1]
        assert inside.any()
        if not _covered(rec, box):
            rows, cols = np.nonzero(inside)
            assert rows.min() == 0 and rows.max() == y1 - y0 - 1
            assert cols.min() <= 1 and cols.max() >= x1 - x0 - 2


def _covered(rec, box):
    """True if a later object overlaps this box (it may hide the edges checked above)."""
    others = [b for b in rec.boxes.astype(int) if not np.array_equal(b, box)]
    return any(
        min(box[2], o[2]) > max(box[0], o[0]) and min(box[3], o[3]) > max(box[1], o[1])
        for o in others
    )


def test_classes_differ_in_shape_or_colour():
    styles = [class_style(label) for label in range(1, 25)]
    assert len(set(styles)) == 24
    assert class_names(3) == ["red rectangle", "green ellipse", "blue triangle"]
    assert class_style(1)[1] == PALETTE[0]


def test_dataset_yields_the_batch_contract():
    ds = SyntheticShapes(Transform(128), num_images=4, num_classes=6)
    image, target = ds[2]
    assert len(ds) == 4 and image.shape == (3, 128, 128)
    assert target["labels"].min() >= 1 and target["labels"].max() <= 6
    assert torch.equal(ds[2][0], image)


def test_bad_settings_fail_early():
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticShapes(Transform(64), num_classes=0)
    with pytest.raises(ValueError, match="num_images"):
        SyntheticShapes(Transform(64), num_images=0)


def test_flips_follow_the_run_seed_without_workers():
    """A map-style source read in the main process (0 workers) draws its flips from torch's
    seed, which the run's seed sets: the same seed, the same flips."""

    def flips(seed):
        torch.manual_seed(seed)
        data = SyntheticShapes(Transform(64, flip_prob=0.5), num_images=16, num_classes=3)
        return [data[i][1]["boxes"].tolist() for i in range(16)]

    assert flips(1) == flips(1) and flips(1) != flips(2)
