"""init_weights: fine-tuning from a checkpoint of this project, its classes carried by name."""

import logging
import shutil

import pytest
import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import open_dict

from frcnn.app.build import build, listed
from frcnn.training.checkpoint import detector_state, load_checkpoint
from tests.app.helpers import SMALL_MODEL, TINY, composed, run
from tests.model.test_convert import torchvision_default


def test_a_checkpoint_of_this_project_starts_a_run_with_other_classes(trained, tmp_path, caplog):
    """The 6-class demo run's checkpoint (EMA weights) into 8 classes: the 6 it knows start
    from its predictor rows, the 2 new ones as initialised, everything else loaded as it is."""
    _, run_dir = trained
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = load_checkpoint(last)
    with caplog.at_level(logging.INFO):
        _, module, _ = built(tmp_path, f"init_weights={last}", "data.num_classes=8", *TINY)
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


def built(tmp_path, *overrides: str):
    cfg = composed(tmp_path, *overrides)
    with open_dict(cfg):
        del cfg.hydra  # as the entry points get it (HydraConfig holds it)
    return build(cfg)


def test_a_checkpoint_of_other_model_settings_is_refused_naming_them(trained, tmp_path):
    """Its tensors would not fit (the user left out the model settings it was trained with):
    most of the detector would start random. No ImageNet download is tried first (offline)."""
    _, run_dir = trained
    last = run_dir / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match="other model settings") as refused:
        built(tmp_path, f"init_weights={last}", "model=resnet50_fpn", *TINY)
    assert "Give its settings: model.backbone.depth=18 model.backbone.norm=bn (its run" in str(
        refused.value
    )
    assert "this detector's backbone.layer1.0.bn3.bias" in str(refused.value)  # ResNet-50's
    without_its_model = [o for o in TINY if o not in SMALL_MODEL]
    with pytest.raises(ValueError, match="other model settings") as refused:
        built(tmp_path / "b", f"init_weights={last}", *without_its_model)
    assert "model.fpn_channels=32" in str(refused.value)
    assert "model.roi_heads.representation_size=64" in str(refused.value)


def test_torchvision_weights_into_another_model_are_refused_naming_theirs(tmp_path):
    """torchvision's ResNet-50-FPN weights into the demo's small ResNet-18 model: only
    tensors that happen to share a shape would load (the README's line gives their model)."""
    weights = tmp_path / "fasterrcnn_resnet50_fpn.pth"
    torch.save(torchvision_default(64).state_dict(), weights)
    with pytest.raises(ValueError, match="Give its settings: model=resnet50_fpn anchors=fpn"):
        built(tmp_path, f"init_weights={weights}", *TINY)


def test_a_checkpoint_of_other_anchors_is_warned_of(trained, tmp_path, caplog, monkeypatch):
    """The tensors fit (3 anchors a cell either way) but its RPN learnt other anchor sizes."""
    _, run_dir = trained
    last = run_dir / "checkpoints" / "last.ckpt"
    built(tmp_path, f"init_weights={last}", "anchors=fpn", *TINY)
    assert "was trained with model.anchors.sizes=[[16],[32],[64],[128],[256]]; this" in caplog.text
    caplog.clear()
    built(tmp_path / "b", f"init_weights={last}", *TINY)
    assert "was trained with" not in caplog.text
    # the other processes of a DDP run build it too: their start-up lines are not said again
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        built(tmp_path / "c", f"init_weights={last}", "anchors=fpn", *TINY)
    assert "init_weights=" not in caplog.text


def test_init_weights_from_a_run_trains_through_the_users_door_and_resumes_without_them(
    trained, tmp_path
):
    """The run goes on from its own checkpoint with the command that started it, also once the
    initial weights' file is gone: the checkpoint's weights replace them."""
    _, run_dir = trained
    start = tmp_path / "start.ckpt"
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", start)
    command = [f"init_weights={start}", "data.num_classes=3", *TINY]
    result = run("train.py", *command, "trainer.max_epochs=1", log_dir=tmp_path)
    printed = result.stdout + result.stderr
    assert "carried over by class name: background, red rectangle, green ellipse, blue" in printed
    (last,) = tmp_path.glob("train/runs/*/checkpoints/last.ckpt")
    first = load_checkpoint(last)
    start.unlink()
    result = run(
        "train.py", *command, "trainer.max_epochs=2", f"ckpt_path={last}", log_dir=tmp_path
    )
    printed = result.stdout + result.stderr
    assert f"init_weights={start} not read: the run goes on from ckpt_path" in printed
    resumed = load_checkpoint(last)
    assert resumed["epoch"] == first["epoch"] + 1
    assert resumed["config"]["model"] == first["config"]["model"]


def test_long_lists_of_names_are_cut_in_the_start_up_line():
    """COCO's 80 classes carried over made a line of 1,700 characters."""
    names = [f"class {i}" for i in range(80)]
    assert listed(names) == ", ".join(names[:12]) + ", ... (80 in all)"
    assert listed(names[:12]) == ", ".join(names[:12]) and listed([]) == "none"
