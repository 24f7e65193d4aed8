"""End to end: a small detector learns the synthetic shapes (loss falls, mAP rises)."""

import torch
from torchmetrics.detection import MeanAveragePrecision

from frcnn.data import SyntheticShapes, Transform, collate
from frcnn.model import FasterRCNN


def mean_ap(model, images, targets):
    metric = MeanAveragePrecision(iou_thresholds=[0.5], backend="faster_coco_eval")
    with torch.no_grad():
        metric.update(model.eval()(images), targets)
    model.train()
    return metric.compute()["map_50"]


def test_a_small_detector_overfits_a_few_synthetic_images():
    torch.manual_seed(0)
    data = SyntheticShapes(Transform(128), num_images=8, num_classes=3, max_objects=4)
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
    assert mean_ap(model, images, targets) < 0.1
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    history = []
    for _ in range(90):
        pick = torch.randperm(8)[:4]
        losses = model(images[pick], [targets[i] for i in pick])
        loss = sum(losses.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-10:]) < 0.8 * sum(history[:10])
    assert mean_ap(model, images, targets) > 0.8
