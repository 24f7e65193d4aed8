"""PR curves: each drawn curve's area, computed COCO's way, is COCOeval's AP of that class and
IoU; TensorBoard gets the same curves."""

import json

import numpy as np
import pytest
import torch
from faster_coco_eval import COCO, COCOeval_faster
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray
from torch.utils.tensorboard import SummaryWriter

from frcnn.data import COCOFolder, Transform
from frcnn.evaluation.results import (
    CURVE_IOUS,
    FIGURE_CLASSES,
    Evaluation,
    log_pr_curves,
    pr_curves,
)
from frcnn.training.module import DetectorModule
from frcnn.visualization.report_figures import pr_figure
from tests.app.test_evaluation import (
    CATEGORIES,
    FixedDetections,
    coco_json_with_crowds,
    detections_for,
    validated,
)

# COCOeval's summary: AP (0.5:0.95), AP50, AP75
STAT = {"0.5:0.95": 0, "0.5": 1, "0.75": 2}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """The module's evaluation of known detections, and COCOeval run on each class alone."""
    root = tmp_path_factory.mktemp("coco")
    rng = np.random.default_rng(3)
    annotation_file = coco_json_with_crowds(root, rng)
    results = detections_for(json.loads(annotation_file.read_text())["annotations"], rng)
    source = COCOFolder(Transform(416), str(annotation_file), str(root / "images"))
    names = [c["name"] for c in CATEGORIES]
    module = DetectorModule(
        FixedDetections(results, source.label_of), torch.optim.SGD, class_names=names
    )
    validated(module, source)
    truth = COCO(str(annotation_file))
    alone = {}
    for category in CATEGORIES:
        evaluation = COCOeval_faster(
            truth, truth.loadRes(results), "bbox", print_function=lambda *a: None
        )
        evaluation.params.catIds = [category["id"]]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
        alone[category["name"]] = evaluation.stats
    return module.evaluation, alone


def test_each_plotted_curve_has_cocoevals_ap_as_its_area(evaluated):
    evaluation, alone = evaluated
    figure = pr_figure(evaluation)
    for ax, iou in zip(figure.axes, CURVE_IOUS, strict=True):
        lines = {line.get_label().rsplit(" (", 1)[0]: line for line in ax.get_lines()}
        for name, stats in alone.items():
            recall, precision = lines[name].get_data()
            assert np.allclose(recall, np.linspace(0, 1, 101))
            # COCO's area: the mean precision over the 101 recall points
            assert np.mean(precision) == pytest.approx(stats[STAT[iou]], abs=1e-6), (name, iou)
        mean = np.mean([alone[name][STAT[iou]] for name in alone])
        assert np.mean(lines["all classes"].get_data()[1]) == pytest.approx(mean, abs=1e-6)
    assert np.mean(lines["all classes"].get_data()[1]) == pytest.approx(
        evaluation.metrics["val/map"], abs=1e-6
    )


def test_tensorboard_gets_every_curve(evaluated, tmp_path):
    evaluation, alone = evaluated
    writer = SummaryWriter(tmp_path)
    log_pr_curves(writer, evaluation, step=7)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    tags = events.Tags()["tensors"]
    assert sorted(tags) == sorted(
        f"pr/{iou}/{name}" for iou in CURVE_IOUS for name in [*alone, "all"]
    )
    for name, stats in alone.items():
        event = events.Tensors(f"pr/0.5/{name}")[0]
        assert event.step == 7
        # rows: TP, FP, TN, FN, precision, recall; thresholds rising, so recall falling
        precision, recall = make_ndarray(event.tensor_proto)[4:]
        assert recall[0] == 1 and recall[-1] == 0
        assert float(precision.astype(np.float64).mean()) == pytest.approx(stats[1], abs=1e-6)


def test_tensorboard_gets_only_the_mean_curves_of_many_classes(tmp_path):
    """More classes than FIGURE_CLASSES (LVIS's 1203: 3,609 cards per validation): the mean."""
    many = FIGURE_CLASSES + 1
    truth = {"labels": torch.arange(1, many + 1), "iscrowd": torch.zeros(many, dtype=torch.long)}
    precision = torch.rand(10, 101, many, 4, 3, generator=torch.Generator().manual_seed(0))
    evaluation = Evaluation([], [truth], [], [], precision, list(range(1, many + 1)))
    writer = SummaryWriter(tmp_path)
    log_pr_curves(writer, evaluation, step=1)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    assert sorted(events.Tags()["tensors"]) == sorted(f"pr/{iou}/all" for iou in CURVE_IOUS)


def test_a_validation_without_images_has_no_boxes_and_no_curves(tmp_path):
    empty = Evaluation([], [], [], [], torch.zeros(10, 101, 0, 4, 3), [])
    assert empty.boxes_per_class() == {}
    assert all(curves.shape == (0, 101) for curves in pr_curves(empty.precision).values())
