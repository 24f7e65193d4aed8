"""Fixtures shared across test folders."""

import pytest
import torch

from frcnn.data import SyntheticShapes, Transform, collate
from frcnn.model import FasterRCNN

OVERFIT_SIZE = 128


@pytest.fixture(scope="session")
def overfit_detector():
    """A small detector trained for 90 steps on 8 synthetic images (about 40 s on a CPU).

    Returns (model, data, history): the model in eval mode, the SyntheticShapes source it
    learned (seed 0) and the total loss of every step.
    """
    torch.manual_seed(0)
    data = SyntheticShapes(Transform(OVERFIT_SIZE), num_images=8, num_classes=3, max_objects=4)
    batch = collate([data[i] for i in range(8)])
    images, targets = batch["images"], batch["targets"]
    model = FasterRCNN(
        num_classes=3,
        backbone=dict(depth=18, norm="bn", frozen="none"),
        fpn_channels=64,
        anchors=dict(sizes=((16,), (32,), (64,), (128,), (256,))),
        rpn=dict(
            pre_nms_top_n_train=500,
            post_nms_top_n_train=200,
            pre_nms_top_n_test=300,
            post_nms_top_n_test=100,
        ),
        roi_heads=dict(batch_size_per_image=64, representation_size=256),
    )
    untrained = mean_ap(model, images, targets)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    model.train()
    history = []
    for _ in range(90):
        pick = torch.randperm(8)[:4]
        losses = model(images[pick], [targets[i] for i in pick])
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    return model.eval(), data, history, untrained


def mean_ap(model, images, targets) -> float:
    """COCO mAP@0.5 of `model` on a batch (the model is left in the mode it had)."""
    from torchmetrics.detection import MeanAveragePrecision

    was_training = model.training
    metric = MeanAveragePrecision(iou_thresholds=[0.5], backend="faster_coco_eval")
    with torch.no_grad():
        metric.update(model.eval()(images), targets)
    model.train(was_training)
    return float(metric.compute()["map_50"])
