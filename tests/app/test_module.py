import functools

import pytest
import torch

from frcnn.model import FasterRCNN
from frcnn.module import DetectorModule


def module():
    model = FasterRCNN(num_classes=2, backbone=dict(depth=18, frozen="layer2"), fpn_channels=16)
    return DetectorModule(model, functools.partial(torch.optim.SGD, lr=0.1, weight_decay=1e-4))


def test_no_weight_decay_on_biases_and_norms_and_no_frozen_parameters():
    optimizer = module().configure_optimizers()
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert all(p.requires_grad for g in optimizer.param_groups for p in g["params"])


def test_a_non_finite_loss_stops_training_naming_step_and_term():
    m = module()
    losses = {
        "rpn_cls": torch.tensor(0.5),
        "rpn_box": torch.tensor(float("nan")),
        "roi_cls": torch.tensor(1.0),
        "roi_box": torch.tensor(0.1),
    }
    with pytest.raises(FloatingPointError, match=r"step 0 .*rpn_box"):
        m.on_train_batch_end({"loss": sum(losses.values()), "losses": losses}, None, 3)
