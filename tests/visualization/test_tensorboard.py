"""The TensorBoard pictures' callbacks: their settings checked as the run starts (the pictures
themselves: tests/app/test_train.py, through train.py)."""

import re

import pytest

from frcnn.visualization.inspection import WHAT
from frcnn.visualization.tensorboard import DetectionImages, InspectionFigures


@pytest.mark.parametrize(
    ("settings", "told"),
    [
        # a negative count drew no image, a score above 1 no detection
        ({"num_images": -1}, r"^callbacks.detection_images.num_images=-1: must lie in \[1, inf"),
        ({"min_score": 2}, r"^callbacks.detection_images.min_score=2: must lie in \[0, 1\]$"),
    ],
)
def test_detection_images_refuse_a_count_or_score_that_draws_nothing(settings, told):
    with pytest.raises(ValueError, match=told):
        DetectionImages(**settings)


@pytest.mark.parametrize(
    ("what", "given"),
    [
        (["objectnes"], "callbacks.inspection.what=[objectnes]"),  # found after an epoch before
        ("objectness", "callbacks.inspection.what=objectness"),  # read letter by letter before
        ([], "callbacks.inspection.what=[]"),  # drew nothing
        (["labels"], "callbacks.inspection.what=[labels]"),  # visualize.py's, of a data set
    ],
)
def test_inspection_figures_refuse_what_is_no_list_of_their_figures(what, given):
    choices = ", ".join(WHAT)
    with pytest.raises(
        ValueError, match=rf"^{re.escape(given)}: give a list of one or more of {choices}, e.g."
    ):
        InspectionFigures(what)


@pytest.mark.parametrize("every", [0, -1, 1.5])
def test_inspection_figures_refuse_an_interval_that_is_no_count_of_epochs(every):
    # 0 failed at the first validation (modulo by zero), -1 drew at every one
    with pytest.raises(ValueError, match=r"^callbacks.inspection.every_n_epochs=.*in \[1, inf\)$"):
        InspectionFigures(every_n_epochs=every)


def test_inspection_figures_take_any_of_their_figures():
    assert InspectionFigures(list(WHAT), every_n_epochs=3).what == WHAT
