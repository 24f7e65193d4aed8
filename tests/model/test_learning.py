"""End to end: a small detector learns to find coloured rectangles."""

import torch
from torchmetrics.detection import MeanAveragePrecision

from frcnn.model import FasterRCNN

COLOURS = torch.tensor([[230, 40, 40], [40, 200, 40], [40, 80, 230]], dtype=torch.uint8)


def rectangles(n, size=128, seed=0):
    """n noisy grey images with 1-3 solid rectangles in one of three colours (= classes)."""
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 3, size, size, generator=g) * 60 + 60).to(torch.uint8)
    targets = []
    for i in range(n):
        boxes, labels = [], []
        for _ in range(int(torch.randint(1, 4, (1,), generator=g))):
            w, h = torch.randint(24, 56, (2,), generator=g).tolist()
            x0 = int(torch.randint(0, size - w, (1,), generator=g))
            y0 = int(torch.randint(0, size - h, (1,), generator=g))
            c = int(torch.randint(0, 3, (1,), generator=g))
            images[i, :, y0 : y0 + h, x0 : x0 + w] = COLOURS[c][:, None, None]
            boxes.append([x0, y0, x0 + w, y0 + h])
            labels.append(c + 1)
        targets.append(
            {"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}
        )
    return images, targets


def test_overfits_a_few_images():
    torch.manual_seed(0)
    images, targets = rectangles(8)
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
    assert sum(history[-10:]) < 0.8 * sum(history[:10])
    assert mean_ap(model, images, targets) > 0.8


def mean_ap(model, images, targets):
    metric = MeanAveragePrecision(iou_thresholds=[0.5], backend="faster_coco_eval")
    with torch.no_grad():
        metric.update(model.eval()(images), targets)
    model.train()
    return metric.compute()["map_50"]
