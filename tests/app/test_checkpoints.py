"""Checkpoints: self-sufficient for eval / predict / visualize, safe to open, compile-proof."""

import copy
import os
import shutil

import pytest
import torch
from PIL import Image

from frcnn import MOVED
from frcnn.app.build import checkpoint_run_config
from frcnn.training.checkpoint import detector_from_checkpoint, load_checkpoint
from tests.app.helpers import ROOT, TINY, composed, metrics, refused, run, run_dirs, run_script


class Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint would carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_everywhere(trained, tmp_path):
    _, run_dir = trained
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({**checkpoint, "extra": Payload(marker)}, evil)
    with pytest.raises(ValueError, match="could run code"):
        load_checkpoint(evil)
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 48)).save(image)
    for script, extra in (
        ("eval.py", []),
        ("predict.py", [f"input={image}", f"output={tmp_path / 'out'}"]),
        ("visualize.py", [f"image={image}", f"output={tmp_path / 'out'}"]),
    ):
        with pytest.raises(AssertionError, match="could run code"):
            run(script, f"ckpt_path={evil}", "device=cpu", *extra, log_dir=tmp_path / "logs")
    assert not marker.exists()


def copying(source, marker) -> dict:
    """A config entry that Hydra's `instantiate` would call: `shutil.copy(source, marker)`
    writes a file (Hydra's blocklist stops os.system and subprocess, not file writes)."""
    return {"_target_": "shutil.copy", "_args_": [str(source), str(marker)]}


def sections(config, prefix):
    """(dotted key, dict) of every mapping in a nested config, itself included."""
    yield prefix, config
    for key, value in config.items():
        if isinstance(value, dict):
            yield from sections(value, f"{prefix}.{key}")


def with_payload(config: dict, key: str, payload: dict) -> dict:
    """A deep copy of a saved {"model", "data"} config with the mapping at dotted `key`
    replaced by `payload`."""
    config = copy.deepcopy(config)
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[last] = payload
    return config


def test_no_key_of_a_saved_config_can_name_code(trained, tmp_path):
    """A payload in place of each mapping of the saved model and data configs is refused,
    naming the key, and never runs."""
    _, run_dir = trained
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    saved = {k: checkpoint["config"][k] for k in ("model", "data")}
    cfg = composed(tmp_path, "ckpt_path=x", "device=cpu", config_name="eval")
    source, marker = run_dir / ".hydra" / "config.yaml", tmp_path / "pwned"
    keys = [key for section in saved for key, _ in sections(saved[section], section)]
    assert {"model", "model.backbone", "model.rpn", "model.roi_heads", "model.anchors"} <= {*keys}
    assert {"data", "data.train", "data.val"} <= {*keys}
    for key in keys:
        config = with_payload(saved, key, copying(source, marker))
        with pytest.raises(ValueError, match=rf"{key}\._target_='shutil.copy' was refused"):
            run_config = checkpoint_run_config(cfg, config, [])
            detector_from_checkpoint({**checkpoint, "config": config}, run_config.model)
        assert not marker.exists(), key


def test_a_checkpoint_whose_config_names_code_runs_none_of_it(trained, tmp_path):
    """The probe's attack: a checkpoint that passes the safe loader, whose config names file
    writes. Every command that reads a checkpoint refuses it with the key, and writes nothing;
    resuming from it never reads its config as code."""
    _, run_dir = trained
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    source, marker = run_dir / ".hydra" / "config.yaml", tmp_path / "pwned"
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 48)).save(image)
    out = f"output={tmp_path / 'out'}"
    commands = {
        "model.rpn": [
            ("eval.py", ["device=cpu"]),
            ("predict.py", ["device=cpu", f"input={image}", out]),
            ("export.py", [f"output={tmp_path / 'model.onnx'}"]),
            ("visualize.py", ["device=cpu", f"image={image}", out]),
        ],
        "data.val": [("eval.py", ["device=cpu"]), ("visualize.py", ["device=cpu", out])],
    }
    for key, scripts in commands.items():
        evil = tmp_path / f"{key}.ckpt"
        config = with_payload(checkpoint["config"], key, copying(source, marker))
        torch.save({**checkpoint, "config": config}, evil)
        assert load_checkpoint(evil)  # no pickle trick: the safe loader takes it
        for script, extra in scripts:
            with pytest.raises(AssertionError, match=rf"{key}\._target_='shutil.copy' was refused"):
                run(script, f"ckpt_path={evil}", *extra, log_dir=tmp_path / "logs")
            assert not marker.exists(), script
    # resuming: the run had ended (max_epochs=2), so the resumed run trains no step
    resume = ["trainer.max_epochs=2", "callbacks=inspection", "ema=on", *TINY]
    run("train.py", f"ckpt_path={tmp_path / 'model.rpn.ckpt'}", *resume, log_dir=tmp_path)
    assert not marker.exists()


def test_code_the_user_names_on_the_command_line_is_theirs_to_run(trained, tmp_path):
    """A saved source outside this project's is refused with the override that allows it;
    given on the command line, the key is the user's own choice."""
    _, run_dir = trained
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["config"]["data"]["val"]["_target_"] = "my_package.MySource"
    path = tmp_path / "own_source.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(AssertionError, match="give it on the command line: data.val._target_="):
        run("eval.py", f"ckpt_path={path}", "device=cpu", log_dir=tmp_path / "refused")
    run(
        "eval.py",
        f"ckpt_path={path}",
        "device=cpu",
        "data.val._target_=frcnn.data.SyntheticShapes",
        log_dir=tmp_path,
    )
    assert 0.0 <= metrics(run_dirs(tmp_path, "eval")[0])["val/map"] <= 1.0


def test_an_interpolation_in_a_saved_config_is_refused(trained, tmp_path):
    _, run_dir = trained
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["config"]["model"]["rpn"]["nms_thresh"] = "${oc.env:HOME}"
    path = tmp_path / "interpolated.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"model.rpn.nms_thresh='\$\{oc.env:HOME\}' is an interp"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"PK\x03\x04broken zip"])
def test_a_file_that_is_no_checkpoint_is_named(tmp_path, content):
    path = tmp_path / "model.ckpt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="model.ckpt.*not a checkpoint of this project"):
        load_checkpoint(path)


def test_weights_or_another_projects_checkpoint_are_named_for_what_they_are(tmp_path):
    """torchvision's detector weights (a bare state dict), other weights, and a Lightning
    checkpoint of another project (weights, no run config) load as tensors but are no
    checkpoint of this project: each is named for what it is, torchvision's with the setting
    that takes them."""
    torchvision_weights = {"backbone.body.conv1.weight": torch.zeros(4, 3, 7, 7)}
    torch.save(torchvision_weights, path := tmp_path / "frcnn.pth")
    with pytest.raises(ValueError, match=r"frcnn.pth'? is not .*: it holds torchvision's Faster"):
        load_checkpoint(path)
    torch.save({"conv.weight": torch.zeros(4, 3, 7, 7)}, path := tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other.pth'? is not .* project: it has no state_dict"):
        load_checkpoint(path)
    torch.save({"state_dict": torchvision_weights, "pytorch-lightning_version": "2.6.0"}, path)
    with pytest.raises(ValueError, match=r"other.pth'? holds no run config: was it written by"):
        load_checkpoint(path)


def test_eval_needs_only_the_checkpoint_and_the_validation_data(trained, tmp_path):
    """A checkpoint whose config names ImageNet weights, init_weights and a training set that
    are all unreachable, and the module names of the flat layout before the packages
    (`frcnn.MOVED`): eval.py, given nothing but the checkpoint, rebuilds its
    detector and its validation data from the checkpoint and reproduces the logged val/map."""
    _, run_dir = trained
    best = next((run_dir / "checkpoints").glob("epoch*-map*.ckpt"))  # the run's final figures
    checkpoint = torch.load(best, weights_only=True)
    config = checkpoint["config"]
    config["model"]["backbone"]["weights"] = "/nowhere/resnet18-imagenet.pth"
    config["init_weights"] = "/nowhere/fasterrcnn_coco.pth"
    config["data"]["train"] = {
        "_target_": "frcnn.data.COCOFolder",
        "_partial_": True,
        "annotation_file": "/nowhere/instances_train2017.json",
        "image_dir": "/nowhere/train2017",
    }
    old_name = {new: old for old, new in MOVED.items()}
    for section in (config["module"], config["module"]["scheduler"], *config["callbacks"].values()):
        if section:  # e.g. WeightEMA in training.callbacks -> in callbacks
            module, _, name = section["_target_"].rpartition(".")
            section["_target_"] = f"{old_name.get(module, module)}.{name}"
    assert config["module"]["_target_"] == "frcnn." + "module.DetectorModule"
    path = tmp_path / "offline.ckpt"
    torch.save(checkpoint, path)
    run("eval.py", f"ckpt_path={path}", "device=cpu", log_dir=tmp_path)
    evaluated = metrics(run_dirs(tmp_path, "eval")[0])
    assert evaluated["val/map"] == pytest.approx(metrics(run_dir)["val/map"], abs=1e-6)


def test_eval_applies_post_processing_given_on_the_command_line(trained, tmp_path):
    _, run_dir = trained
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    # no detection is 100,000 px across: nothing is detected, so the mAP is 0
    run(
        "eval.py",
        f"ckpt_path={ckpt}",
        "device=cpu",
        "model.roi_heads.min_size=100000",
        log_dir=tmp_path,
    )
    assert metrics(run_dirs(tmp_path, "eval")[0])["val/map"] <= 0.0


def test_a_misspelled_data_setting_of_eval_is_named_with_where_the_checkpoints_are(
    trained, tmp_path
):
    """eval.py's data settings are the checkpoint's: the config composed here has other data's,
    so no nearest setting is guessed from it."""
    checkpoint = trained[1] / "checkpoints" / "last.ckpt"
    printed = refused("eval.py", f"ckpt_path={checkpoint}", "data.val.num_imgs=3", log_dir=tmp_path)
    assert (
        "eval: TypeError: data.val.num_imgs=3: SyntheticShapes takes no setting num_imgs (the "
        "data settings are the checkpoint's: its run's .hydra/config.yaml lists them)"
    ) in printed


def test_compiled_training_writes_plain_keys_that_eval_and_predict_load(tmp_path):
    # the "eager" backend: torch.compile's wrapping without inductor's minutes of CPU compiling
    run("train.py", "trainer.max_epochs=1", "module.compile=eager", *TINY, log_dir=tmp_path)
    last = run_dirs(tmp_path)[0] / "checkpoints" / "last.ckpt"
    keys = load_checkpoint(last)["state_dict"]
    assert not [k for k in keys if "_orig_mod" in k]
    assert "model.backbone.layer1.0.conv1.weight" in keys
    run("eval.py", f"ckpt_path={last}", "device=cpu", "module.compile=eager", log_dir=tmp_path)
    assert 0.0 <= metrics(run_dirs(tmp_path, "eval")[0])["val/map"] <= 1.0
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 48)).save(image)
    run(
        "predict.py",
        f"ckpt_path={last}",
        f"input={image}",
        f"output={tmp_path / 'out'}",
        "device=cpu",
        log_dir=tmp_path,
    )
    assert (tmp_path / "out" / "detections.json").is_file()


def failing_after(monkeypatch, good_writes: int):
    """torch.save that writes `good_writes` checkpoints, then half of the next one and fails
    as a full disk does."""
    import errno

    import frcnn.training.checkpoint

    real, calls = torch.save, []

    def save(obj, file, *args, **kwargs):
        calls.append(file)
        if len(calls) <= good_writes:
            return real(obj, file, *args, **kwargs)
        file.write(b"\0" * 1000)  # what got to the disk before it filled
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(frcnn.training.checkpoint.torch, "save", save)
    return calls


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from frcnn.training.checkpoint import AtomicCheckpointIO

    path = tmp_path / "last.ckpt"
    writer = AtomicCheckpointIO()
    writer.save_checkpoint({"global_step": 5}, path)
    failing_after(monkeypatch, good_writes=0)
    with pytest.raises(OSError, match=r"last.ckpt could not be written \(No space left"):
        writer.save_checkpoint({"global_step": 7}, path)
    assert torch.load(path, weights_only=True) == {"global_step": 5}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left


def test_a_checkpoint_equal_to_another_is_a_second_name_of_it_or_a_copy(tmp_path, monkeypatch):
    """`same_as`, for the next write only: a hard link to that file, which a later write of
    the name replaces (the other keeps its own); on a file system without hard links, a copy."""
    import errno

    from frcnn.training.checkpoint import AtomicCheckpointIO

    writer = AtomicCheckpointIO()
    best, last = tmp_path / "best.ckpt", tmp_path / "last.ckpt"
    writer.save_checkpoint({"global_step": 4}, best)
    writer.same_as = best
    writer.save_checkpoint({"global_step": 4}, last)
    assert last.samefile(best) and writer.same_as is None
    writer.save_checkpoint({"global_step": 8}, last)
    assert not last.samefile(best) and torch.load(best, weights_only=True) == {"global_step": 4}

    def no_hard_links(source, link):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)
    writer.same_as = best
    writer.save_checkpoint({"global_step": 4}, last)
    assert not last.samefile(best) and torch.load(last, weights_only=True) == {"global_step": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.ckpt", "last.ckpt"]


def test_last_ckpt_is_the_best_checkpoint_written_at_its_validation_under_a_second_name(
    tmp_path, monkeypatch
):
    """A validation that improves writes one file: last.ckpt is a second name of the best one
    (no second copy, no more disk). Resumed from it, a validation that does not improve writes
    last.ckpt on its own, and the best checkpoint stays as it was. (The step as the metric,
    the lowest the best: epoch 0 improves, epoch 1 does not.)"""
    saved = failing_after(monkeypatch, good_writes=2)
    lowest_step = ["callbacks.model_checkpoint.monitor=step", "callbacks.model_checkpoint.mode=min"]
    run("train.py", "trainer.max_epochs=1", *lowest_step, *TINY, log_dir=tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    (best,) = (run_dir / "checkpoints").glob("epoch*.ckpt")
    assert last.samefile(best) and len(saved) == 1
    run("train.py", "trainer.max_epochs=2", f"ckpt_path={last}", *lowest_step, *TINY,
        log_dir=tmp_path)  # fmt: skip
    assert [p.name for p in (run_dir / "checkpoints").glob("epoch*.ckpt")] == [best.name]
    assert not last.samefile(best) and best.stat().st_nlink == 1 and len(saved) == 2
    assert load_checkpoint(best)["global_step"] == 4 and load_checkpoint(last)["global_step"] == 8


def test_a_full_disk_stops_training_with_the_last_checkpoint_intact(tmp_path, monkeypatch):
    """Epoch 1's best checkpoint is written (last.ckpt a second name of it); epoch 2's first
    write fails."""
    calls = failing_after(monkeypatch, good_writes=1)
    with pytest.raises(AssertionError, match="could not be written .*the one before it is kept"):
        run("train.py", "trainer.max_epochs=2", *TINY, log_dir=tmp_path)
    assert len(calls) == 2
    (run_dir,) = run_dirs(tmp_path)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4 and last["epoch"] == 0


def test_an_empty_checkpoint_or_a_folder_is_named_for_what_it_is(tmp_path):
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty.ckpt' is empty \(0 bytes\)"):
        load_checkpoint(tmp_path / "empty.ckpt")
    with pytest.raises(IsADirectoryError, match=r"is a folder: give a .ckpt file; it holds empty"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoints").mkdir()  # a run folder
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(IsADirectoryError, match=r"it holds checkpoints/last.ckpt, empty.ckpt$"):
        load_checkpoint(tmp_path)


def test_eval_without_a_checkpoint_names_the_setting(tmp_path):
    """eval.yaml extends train.yaml, whose `ckpt_path: null` a `???` cannot replace (OmegaConf
    merges a missing value as none): the command says what to give, not a TypeError. (Typed
    in a folder of one's own, on the default paths.)"""
    with pytest.raises(AssertionError, match=r"eval: ValueError: ckpt_path is not set: give it"):
        run_script(ROOT / "eval.py", [], tmp_path)


def test_a_moved_run_folder_resumes_where_it_is_now(trained, tmp_path):
    """A run folder copied elsewhere, resumed from its own last.ckpt: the run goes on in the
    copy, writes over its last.ckpt (no last-v1.ckpt beside a stale one), finds its best
    checkpoint there, and leaves the original folder as it was."""
    _, run_dir = trained
    moved = tmp_path / "elsewhere" / run_dir.name
    shutil.copytree(run_dir, moved)
    before = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    ema = ["ema=on", "ema.decay=0.8", "ema.warmup_steps=0"]
    result = run(
        "train.py", f"ckpt_path={moved / 'checkpoints' / 'last.ckpt'}", "trainer.max_epochs=3",
        "callbacks=inspection", *ema, *TINY, log_dir=tmp_path / "logs",
    )  # fmt: skip
    assert "train finished" in result.stdout + result.stderr
    names = sorted(p.name for p in (moved / "checkpoints").iterdir())
    assert "last-v1.ckpt" not in names and len(names) == len(before)
    resumed = load_checkpoint(moved / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 12
    remembered = [
        state[key]
        for name, state in resumed["callbacks"].items()
        if "Checkpoint" in name
        for key in ("dirpath", "best_model_path", "last_model_path")
        if state.get(key)
    ]
    assert remembered and all(p.startswith(str(moved)) for p in remembered), remembered
    assert "val/map" in metrics(moved)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == before
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 8


@pytest.mark.parametrize("version", [None, "not a version"])
def test_a_checkpoint_without_a_lightning_version_is_named(trained, tmp_path, version):
    """Lightning's migration would fail on it with a bare KeyError (resuming)."""
    _, run_dir = trained
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint.pop("pytorch-lightning_version")
    if version:
        checkpoint["pytorch-lightning_version"] = version
    path = tmp_path / "odd.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match="names no Lightning version it was written with"):
        load_checkpoint(path)
    with pytest.raises(AssertionError, match="names no Lightning version"):
        run("train.py", f"ckpt_path={path}", *TINY, log_dir=tmp_path / "logs")
