"""What the inference tests share: a small random detector, seeded; a runtime made to differ."""

import numpy as np
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


def one_detection_short(load):
    """An exported file's loader (`load`: path -> (runner, metadata)) whose runner reports one
    detection fewer per image than the runtime found: a runtime that differs from PyTorch."""

    def loader(path):
        run, metadata = load(path)

        def short(images, image_sizes):
            outputs = run(images, image_sizes)
            return {**outputs, "num_detections": np.maximum(outputs["num_detections"] - 1, 0)}

        return short, metadata

    return loader
