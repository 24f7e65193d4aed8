"""init_weights: fine-tuning from a checkpoint of this project, its classes carried by name."""

import logging

import pytest
import torch
from omegaconf import open_dict

from frcnn.app.build import build, listed
from frcnn.training.checkpoint import detector_state, load_checkpoint
from tests.app.helpers import TINY, composed, run


def test_a_checkpoint_of_this_project_starts_a_run_with_other_classes(trained, tmp_path, caplog):
    """The 6-class demo run's checkpoint (EMA weights) into 8 classes: the 6 it knows start
    from its predictor rows, the 2 new ones as initialised, everything else loaded as it is."""
    _, run_dir = trained
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = load_checkpoint(last)
    cfg = composed(tmp_path, f"init_weights={last}", "data.num_classes=8", *TINY)
    with open_dict(cfg):
        del cfg.hydra  # as the entry points get it (HydraConfig holds it)
    with caplog.at_level(logging.INFO):
        _, module, _ = build(cfg)
    assert (
        "predictor rows carried over by class name: background, red rectangle, green ellipse, "
        "blue triangle, yellow rectangle, purple ellipse, cyan triangle; new classes (rows as "
        "initialised): orange rectangle, white ellipse; tensors left as initialised: none"
        in caplog.text
    )
    assert "(their moving average)" in caplog.text
    saved = detector_state(checkpoint)
    raw = detector_state({"state_dict": checkpoint["current_model_state"]})
    state = module.model.state_dict()
    for key, value in saved.items():
        if "predictor" not in key:
            assert torch.equal(state[key], value), key
    ours, theirs = (
        state["roi_heads.predictor.cls_score.weight"],
        saved["roi_heads.predictor.cls_score.weight"],
    )
    assert ours.shape[0] == 9 and torch.equal(ours[:7], theirs)
    boxes = state["roi_heads.predictor.bbox_pred.bias"]
    assert torch.equal(boxes[:28], saved["roi_heads.predictor.bbox_pred.bias"])
    # the moving average, not the raw weights it was kept beside
    assert saved.keys() == raw.keys()
    assert any(not torch.equal(saved[k], raw[k]) for k in saved)


def test_a_checkpoint_of_another_backbone_is_refused_with_the_setting(trained, tmp_path):
    _, run_dir = trained
    last = run_dir / "checkpoints" / "last.ckpt"
    cfg = composed(tmp_path, f"init_weights={last}", "model=resnet50_fpn", *TINY)
    cfg.model.backbone.weights = None
    with pytest.raises(ValueError, match="holds a ResNet-18 detector; this config builds model."):
        build(cfg)


def test_init_weights_from_a_run_trains_through_the_users_door(trained, tmp_path):
    _, run_dir = trained
    last = run_dir / "checkpoints" / "last.ckpt"
    result = run(
        "train.py", f"init_weights={last}", "data.num_classes=3", "trainer.max_epochs=1", *TINY,
        log_dir=tmp_path,
    )  # fmt: skip
    printed = result.stdout + result.stderr
    assert "carried over by class name: background, red rectangle, green ellipse, blue" in printed


def test_long_lists_of_names_are_cut_in_the_start_up_line():
    """COCO's 80 classes carried over made a line of 1,700 characters."""
    names = [f"class {i}" for i in range(80)]
    assert listed(names) == ", ".join(names[:12]) + ", ... (80 in all)"
    assert listed(names[:12]) == ", ".join(names[:12]) and listed([]) == "none"
