import functools
from unittest.mock import patch

import pytest
import torch

from frcnn.model import FasterRCNN
from frcnn.training.module import COMPILE_SCOPES, DetectorModule
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


def test_each_compile_scope_compiles_its_parts_in_place_and_trains_the_same():
    """The "eager" backend wraps the parts as inductor would (tests/model/test_roi_heads.py
    compiles with inductor itself): the scope's parts and no other; the same losses."""
    torch.manual_seed(0)
    plain = module()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0]]), "labels": torch.tensor([1])}] * 2
    for scope, parts in COMPILE_SCOPES.items():
        compiled = module()
        compiled.load_state_dict(plain.state_dict())
        compiled.compile_backend, compiled.compile_scope = "eager", scope
        compiled.setup("fit")
        wrapped = {n for n, m in compiled.model.named_modules() if m._compiled_call_impl}
        assert wrapped == set(parts)
        assert set(compiled.state_dict()) == set(plain.state_dict())  # keys as before
        losses = []
        for m in (plain, compiled):
            torch.manual_seed(1)  # the same samples of anchors and proposals
            losses.append(m(images, targets))
        torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)


def test_an_unknown_compile_scope_fails_at_start_up():
    model = FasterRCNN(num_classes=2, backbone=dict(depth=18), fpn_channels=16)
    with pytest.raises(ValueError, match="module.compile_scope='all': choose one of"):
        DetectorModule(model, torch.optim.SGD, compile_scope="all")
