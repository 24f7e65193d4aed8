import functools
from unittest.mock import patch

import pytest
import torch

from frcnn.model import FasterRCNN
from frcnn.module import DetectorModule
from tests.conftest import in_two_processes


def module():
    model = FasterRCNN(num_classes=2, backbone=dict(depth=18, frozen="layer2"), fpn_channels=16)
    return DetectorModule(model, functools.partial(torch.optim.SGD, lr=0.1, weight_decay=1e-4))


def test_no_weight_decay_on_biases_and_norms_and_no_frozen_parameters():
    optimizer = module().configure_optimizers()
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert all(p.requires_grad for g in optimizer.param_groups for p in g["params"])


def test_a_non_finite_loss_stops_training_at_the_next_check_naming_its_step_and_term():
    """Noted on the device at every step; read every `finite_check_every` steps and before a
    checkpoint (the read at step 7 here), naming the first non-finite step."""
    m = module()
    m.on_train_start()

    def step(number, rpn_box):
        losses = dict.fromkeys(("rpn_cls", "roi_cls", "roi_box"), torch.tensor(0.5))
        losses["rpn_box"] = torch.tensor(rpn_box)
        with patch.object(DetectorModule, "global_step", number):
            m.on_train_batch_end({"loss": sum(losses.values()), "losses": losses}, None, 0)

    step(1, 0.1)
    step(3, float("nan"))  # noted, not read
    step(5, float("inf"))
    bad = r"step 3 .*: rpn_box\. Training stopped"
    with (
        pytest.raises(FloatingPointError, match=bad),
        patch.object(DetectorModule, "global_step", 7),
    ):
        m.on_save_checkpoint({})
    with pytest.raises(FloatingPointError, match=r"step 3 "):
        step(50, 0.1)  # the periodic read


def image(box, score, loss):
    """One validated image: its ground truth box (label 1) and one detection of `box`."""
    truth = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    return {
        "images": 1,
        "losses": dict.fromkeys(("rpn_cls", "rpn_box", "roi_cls", "roi_box"), torch.tensor(loss)),
        "preds": [{"boxes": torch.tensor([box]), "scores": torch.tensor([score]),
                   "labels": torch.tensor([1])}],
        "truths": [{"boxes": truth, "labels": torch.tensor([1]), "iscrowd": torch.tensor([0])}],
        "input_boxes": [truth], "input_labels": [torch.tensor([1])], "image_size": 64,
    }  # fmt: skip


# a hit scored 0.9 and a miss scored 0.95: AP 1 and 0 apart, between them together
HIT, MISS = image([0.0, 0.0, 10.0, 10.0], 0.9, 1.0), image([50.0, 50.0, 60.0, 60.0], 0.95, 3.0)


def figures(batches) -> dict:
    m = DetectorModule(torch.nn.Identity(), None)
    logged = {}
    m.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    m._val_batches = batches
    m.on_validation_epoch_end()
    return logged


def test_validation_figures_over_processes_are_those_of_all_their_images(tmp_path):
    """Two real processes (gloo) of one image each give the figures of both images."""
    results = in_two_processes(lambda rank: figures([[HIT], [MISS]][rank]), tmp_path)
    together = figures([HIT, MISS])
    assert figures([HIT])["val/map_50"] == 1.0 and figures([MISS])["val/map_50"] == 0.0
    assert 0.0 < together["val/map_50"] < 1.0 and together["val/images"] == 2
    assert together["val/rpn_cls"] == 2.0 and together["val/loss"] == 8.0  # mean per image
    assert results == [together, together]
