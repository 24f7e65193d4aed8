"""A validation split held out of the training data (data.val_fraction), for sets without one."""

import functools
import logging

import numpy as np
import pytest
import torch

from frcnn.data import DetectionDataModule, SyntheticShapes
from frcnn.data.held_out import hold_out
from frcnn.data.sources import SKIPPED
from tests.app.helpers import SMALL, metrics, refused, run, run_dirs
from tests.data.test_datamodule import coco_files, load
from tests.data.test_yolo_folder import CAR, PERSON, write


@pytest.mark.parametrize(("count", "share"), [(10, 0.2), (7, 0.1), (3, 0.5), (1000, 0.15)])
def test_the_share_is_drawn_apart_the_same_whatever_the_runs_seed(count, share):
    train, val = hold_out(count, share)
    assert len(val) == max(1, round(share * count))
    assert sorted([*train, *val]) == list(range(count))  # each image on one side only
    assert list(train) == sorted(train) and list(val) == sorted(val)  # the data's order
    state = np.random.get_state()
    with torch.random.fork_rng():  # (other seeds than the run's, this process's left as they were)
        torch.manual_seed(count)
        np.random.seed(count)
        again = hold_out(count, share)
    np.random.set_state(state)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)


def test_the_held_out_images_are_drawn_from_the_whole_set():
    _, val = hold_out(1000, 0.1)  # not its first or last images (a set sorted by class, date)
    assert val.min() < 100 and val.max() > 900


def unread(**_):
    raise AssertionError("data.val is read")


def held_out_module(**settings):
    """10 synthetic training images, a fifth held out; training flips every image."""
    return DetectionDataModule(
        lambda transform: SyntheticShapes(transform, 10, seed=3),
        unread,
        **{"batch_size": 2, "num_workers": 0, "flip_prob": 1.0, "val_fraction": 0.2, **settings},
    )


def image_ids(source) -> list[int]:
    return [source.record(i).image_id for i in range(len(source))]


def test_training_and_validation_share_no_image_and_validation_is_not_flipped(caplog):
    dm = held_out_module()
    with caplog.at_level(logging.INFO, logger="frcnn.data.datamodule"):
        dm.setup("fit")
    train, val = image_ids(dm.train_set), image_ids(dm.val_set)
    assert (len(train), len(val)) == (8, 2) and sorted(train + val) == list(range(10))
    unflipped = SyntheticShapes(dm.val_transform, 10, seed=3)
    for i, image_id in enumerate(val):
        assert torch.equal(dm.val_set[i][0], unflipped[image_id][0])
    image, _ = dm.train_set[0]
    assert torch.equal(image, unflipped[train[0]][0].flip(-1))  # the training transform's
    assert not dm.val_set.substitute and dm.train_set.substitute
    assert "data.train: 8 images (synthetic" in caplog.text
    assert "less the 20% held out by data.val_fraction=0.2)" in caplog.text
    assert "data.val: 2 images (synthetic" in caplog.text
    assert ", the 20% held out by data.val_fraction=0.2)" in caplog.text
    # eval.py's stage validates on the same images, building no training part
    alone = held_out_module()
    alone.setup("validate")
    assert alone.train_set is None and image_ids(alone.val_set) == val
    # int8's calibration images: those left to train on, in order
    calibration = torch.cat([batch["images"] for batch in dm.calibration_dataloader()])
    assert torch.equal(calibration, torch.stack([unflipped[i][0] for i in train]))


def test_rare_classes_are_repeated_among_the_images_left_to_train_on():
    train = functools.partial(SyntheticShapes, num_images=10, seed=3, repeat_factor_threshold=0.5)
    dm = DetectionDataModule(train, None, num_workers=0, batch_size=2, val_fraction=0.2)
    dm.setup("fit")
    assert len(dm.repeat_factors) == len(dm.train_set) == 8
    held = set(image_ids(dm.val_set))
    trained = SyntheticShapes(dm.val_transform, 10, seed=3)
    with_class = [  # per class, the training images that have it
        sum(label in trained.labels(i) for i in range(10) if i not in held)
        for label in range(1, dm.num_classes + 1)
    ]
    assert [images for _, images, _, _ in dm.sampling] == with_class


def test_what_each_part_skips_is_counted_under_its_own_name(tmp_path):
    """A source reports some skips itself (YOLO's malformed label lines): each part's under
    its own name, the held-out one's apart from training's."""
    labels = f"{PERSON}\nnot a line\n{CAR}"
    images = {f"images/train/{i}.jpg": labels for i in range(5)}
    root = write(tmp_path / "yolo", images, {"train": "images/train", "names": ["person", "car"]})
    dm = load("yolo", root=str(root), val_fraction=0.4, num_workers=0, batch_size=1)
    dm.setup("fit")
    assert len(dm.val_set[0][1]["boxes"]) == 2 and len(dm.train_set[0][1]["boxes"]) == 2
    reason = "malformed label lines dropped"
    names = {source for source, why in SKIPPED if why == reason}
    assert len(names) == 2 and all(name.startswith(f"yolo {root}") for name in names)
    held = "40% held out by data.val_fraction=0.4"
    assert {name.split(": images/train, ")[1] for name in names} == {
        f"the {held}",
        f"less the {held}",
    }


def test_a_wrong_box_format_is_refused_at_start_up_before_anything_is_held_out(tmp_path):
    """The training source is built, and checked, as without data.val_fraction: pixel boxes
    in a YOLO folder stop the start-up."""
    images = {f"images/{i}.jpg": "0 100 50 40 40" for i in range(5)}  # pixels, not 0..1
    root = write(tmp_path / "yolo", images, {"train": "images", "names": ["person"]})
    dm = load("yolo", root=str(root), val_fraction=0.2, num_workers=0)
    with pytest.raises(ValueError, match=r"are the labels in pixels"):
        dm.setup("fit")


def test_a_missing_validation_split_says_how_to_hold_one_out(tmp_path, coco_folder, monkeypatch):
    root = write(tmp_path / "yolo", {"images/a.jpg": PERSON, "images/b.jpg": CAR}, {})
    (root / "data.yaml").write_text("train: images\nnames: [person, car]\n")
    hint = r"A data set without a validation split: data.val_fraction=0.1 holds out a tenth"
    with pytest.raises(FileNotFoundError, match=rf"names no such split .*\['train'\]\)\. {hint}"):
        load("yolo", root=str(root), num_workers=0).setup("fit")
    missing = {"annotation_file": str(tmp_path / "val.json")}
    message = rf"^data.val.annotation_file='.*val.json': no such file\. {hint}"
    with pytest.raises(FileNotFoundError, match=message):
        coco_files(coco_folder, monkeypatch, val=missing).setup("fit")
    # held out, the set trains, its validation file unread
    dm = coco_files(coco_folder, monkeypatch, val=missing, val_fraction=0.25, batch_size=1)
    dm.setup("fit")
    assert image_ids(dm.train_set) == [1, 2, 4] and image_ids(dm.val_set) == [3]


def test_images_without_objects_are_left_out_of_the_training_part_alone(
    coco_folder, monkeypatch, caplog
):
    """data.train.keep_empty=false (coco_files'): the share is drawn from every image, so the
    held-out validation keeps those without objects, as data.val does, and training has none.
    (Validation and training share no image file: nothing to warn of.)"""
    for share, val in ((0.25, [3]), (0.5, [1, 3]), (0.75, [1, 2, 3])):
        dm = coco_files(coco_folder, monkeypatch, val_fraction=share, batch_size=1)
        with caplog.at_level("WARNING"):
            dm.setup("fit")
        assert "are training images" not in caplog.text
        assert image_ids(dm.val_set) == val  # image 3 has no objects
        train = [i for i in (1, 2, 4) if i not in val]
        assert image_ids(dm.train_set) == train
        assert image_ids(dm.calibration_dataloader().dataset) == train  # int8's


@pytest.mark.parametrize("share", [0, -0.1, 1.5, "a tenth"])
def test_a_share_outside_0_to_1_stops_at_start_up(share):
    with pytest.raises(ValueError, match=r"^data.val_fraction="):
        held_out_module(val_fraction=share)


@pytest.mark.parametrize("share", [1, 0.96])
def test_a_share_that_leaves_nothing_to_train_on_stops_at_start_up(share):
    dm = held_out_module(val_fraction=share)
    with pytest.raises(ValueError, match=rf"^data.val_fraction={share}: .* 10 images; .* none"):
        dm.setup("fit")


def test_a_stream_is_refused_naming_the_setting(hub_parquet):
    dm = load(
        "coco", num_workers=0, batch_size=2, val_fraction=0.1, train={"data_files": hub_parquet}
    )
    with pytest.raises(ValueError, match=r"^data.val_fraction=0.1: .* a stream cannot"):
        dm.setup("fit")


def test_a_data_config_of_a_training_source_alone_validates_on_its_share(tmp_path):
    """data=base (and a yaml of one's own that extends it) names no validation source: with
    data.val_fraction the run trains, and eval.py of its checkpoint (whose saved config names
    base.yaml's stand-in) validates on the same images, or on a data.val that its command line
    gives; without it, the start-up says both ways out."""
    own = ["data=base", "data.train._target_=frcnn.data.SyntheticShapes"]
    sizes = ["+data.train.num_images=12", *SMALL, "trainer.max_epochs=1", "report=false"]
    refusal = refused("train.py", *own, *sizes, log_dir=tmp_path / "refused")
    assert "data.val: no validation source: name one (data.val._target_=...), or hold" in refusal
    run("train.py", *own, *sizes, "data.val_fraction=0.25", log_dir=tmp_path)
    (trained,) = run_dirs(tmp_path)
    checkpoint = trained / "checkpoints" / "last.ckpt"
    run("eval.py", f"ckpt_path={checkpoint}", "device=cpu", "report=false", log_dir=tmp_path)
    (evaluated,) = run_dirs(tmp_path, "eval")
    assert metrics(trained)["val/images"] == metrics(evaluated)["val/images"] == 3
    # a validation set of the command line's validates, not the held-out share
    own_val = ["data.val._target_=frcnn.data.SyntheticShapes", "data.val.num_images=5"]
    run("eval.py", f"ckpt_path={checkpoint}", *own_val, "device=cpu", log_dir=tmp_path / "own")
    assert metrics(run_dirs(tmp_path / "own", "eval")[0])["val/images"] == 5
    # both on one command line: refused, data.val being unread
    refusal = refused("train.py", *own, own_val[0], "data.val_fraction=0.25", log_dir=tmp_path)
    message = "data.val._target_=frcnn.data.SyntheticShapes: data.val is not read where data."
    assert f"{message}val_fraction=0.25 holds out data.train's images" in refusal
