"""What the inference tests share: a small random detector, seeded."""

import torch

from frcnn.model import FasterRCNN


def small_detector(score_thresh: float = 0.05) -> FasterRCNN:
    """A ResNet-18-FPN detector of 3 classes, 32 FPN channels and 50 proposals (seed 0, eval)."""
    torch.manual_seed(0)
    return FasterRCNN(
        num_classes=3,
        backbone={"depth": 18, "norm": "bn", "weights": None},
        fpn_channels=32,
        rpn={"pre_nms_top_n_test": 100, "post_nms_top_n_test": 50},
        roi_heads={"representation_size": 64, "score_thresh": score_thresh},
    ).eval()
