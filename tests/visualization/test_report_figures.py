"""The report's figures for data of many classes (LVIS has 1203): at most FIGURE_CLASSES
drawn, the ones that tell most, on a figure the size of COCO's 80 classes; fewer classes all
drawn, by name."""

import pytest
import torch

from frcnn.evaluation.dataset_stats import dataset_statistics
from frcnn.evaluation.results import FIGURE_CLASSES
from frcnn.model import FasterRCNN
from frcnn.visualization.report_figures import confusion_figure, dataset_figure

MANY = 1203


def names(classes: int) -> list[str]:
    return [f"class {k}" for k in range(1, classes + 1)]


def confusion(classes: int, confused: list[int]) -> torch.Tensor:
    """Every class: 10 boxes found and 1 missed; the `confused` classes also 3 more missed."""
    matrix = torch.zeros(classes + 1, classes + 1, dtype=torch.long)
    matrix[range(classes), range(classes)] = 10
    matrix[:classes, classes] = 1
    matrix[confused, classes] += 3
    return matrix


def tick_labels(figure) -> list[str]:
    return [label.get_text() for label in figure.axes[0].get_yticklabels()]


@pytest.mark.parametrize("share", [False, True])
def test_the_confusion_matrix_of_many_classes_shows_those_with_the_most_errors(share):
    confused = torch.randperm(MANY, generator=torch.Generator().manual_seed(0))[:FIGURE_CLASSES]
    figure = confusion_figure(confusion(MANY, confused.tolist()), [*names(MANY), "bg"], share, 0.5)
    shown = [f"class {k + 1}" for k in sorted(confused.tolist())]
    assert tick_labels(figure) == [*shown, "bg"]
    title = figure.axes[0].title.get_text()
    assert f"the {FIGURE_CLASSES} of {MANY} classes with the most errors" in title
    # COCO's 80 classes, every one drawn: the same size
    coco = confusion_figure(confusion(80, []), [*names(80), "bg"], share, 0.5)
    assert (figure.get_size_inches() == coco.get_size_inches()).all()


def test_the_confusion_matrix_of_a_few_classes_shows_every_class_seen():
    matrix = confusion(5, [1])
    matrix[3] = 0  # class 4: no box, no detection
    figure = confusion_figure(matrix, [*names(5), "bg"], False, 0.5)
    assert tick_labels(figure) == ["class 1", "class 2", "class 3", "class 5", "bg"]
    assert "most errors" not in figure.axes[0].title.get_text()


@pytest.mark.parametrize("classes", [6, MANY])
def test_the_boxes_per_class_of_many_classes_are_sorted_bars_on_a_bounded_figure(classes):
    model = FasterRCNN(num_classes=classes, backbone=dict(depth=18, frozen="none"), fpn_channels=32)
    labels = torch.arange(1, classes + 1).repeat_interleave(torch.arange(classes) % 5 + 1)
    boxes = torch.tensor([10.0, 10.0, 60.0, 60.0]).expand(len(labels), 4)
    stats = dataset_statistics([boxes], [labels], model, 192)
    figure = dataset_figure(stats, names(classes))
    bars = [patch.get_height() for patch in figure.axes[0].patches]
    counts = torch.bincount(labels)[1:].tolist()
    if classes > FIGURE_CLASSES:
        assert bars == sorted(counts, reverse=True)
        assert not any(t.get_text().startswith("class") for t in figure.axes[0].get_xticklabels())
        assert figure.get_size_inches()[0] == 0.18 * FIGURE_CLASSES + 6
    else:
        assert bars == counts
        assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == names(classes)
