import json
import multiprocessing
import os
import re
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from frcnn.app.build import quiet_libraries
from frcnn.data import DetectionDataModule, SyntheticShapes
from frcnn.data.coco_classes import COCO_CLASSES
from frcnn.data.datamodule import StreamEpoch, warn_workers_past_cores
from tests.data.conftest import stop_workers
from tests.helpers import in_two_processes

CONF = Path(__file__).parents[2] / "conf"


def load(name, **overrides):
    """conf/data/<name>.yaml as train.py composes it (on base.yaml), `overrides` on top."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", [f"data={name}", "seed=0"])
    OmegaConf.set_struct(cfg, False)
    cfg.data.merge_with(OmegaConf.create(overrides))
    return instantiate(cfg.data)


def check_batch(batch, batch_size, size):
    assert batch["images"].shape == (batch_size, 3, size, size)
    assert batch["images"].dtype == torch.uint8
    assert len(batch["targets"]) == batch_size
    for t in batch["targets"]:
        assert t["boxes"].dtype == torch.float32 and t["boxes"].shape[1] == 4
        assert t["labels"].dtype == torch.int64 and len(t["labels"]) == len(t["boxes"])
        required = {"boxes", "labels", "image_id", "orig_size", "scale_xy"}
        evaluation = {"crowd_boxes", "crowd_labels", "area", "crowd_area"}  # where known
        assert required <= set(t) <= required | evaluation


def test_synthetic_config_gives_batches_of_the_contract():
    dm = load(
        "synthetic", num_workers=0, batch_size=4, train={"num_images": 8}, val={"num_images": 4}
    )
    dm.setup("fit")
    assert dm.num_classes == 6
    check_batch(next(iter(dm.train_dataloader())), 4, dm.train_transform.size)
    check_batch(next(iter(dm.val_dataloader())), 4, dm.train_transform.size)


def coco_files(coco_folder, monkeypatch, **overrides):
    """conf/data/coco_files.yaml on the test's folder (which has only a val2017 split)."""
    monkeypatch.setenv("COCO_ROOT", str(coco_folder))
    train = {
        "annotation_file": str(coco_folder / "annotations/instances_val2017.json"),
        "image_dir": str(coco_folder / "val2017"),
    }
    return load("coco_files", train=train, **{"num_workers": 0, **overrides})


def test_coco_files_config_reads_a_local_folder(coco_folder, monkeypatch):
    dm = coco_files(coco_folder, monkeypatch, batch_size=2, num_classes=3)
    dm.setup("fit")
    assert dm.num_classes == 3
    check_batch(next(iter(dm.val_dataloader())), 2, 400)


def test_coco_config_streams_local_parquet(hub_parquet):
    overrides = {
        "train": {"data_files": hub_parquet},
        "val": {"data_files": hub_parquet, "split": "val", "limit": 4},
    }
    dm = load("coco", num_workers=2, batch_size=2, **overrides)
    dm.setup("fit")
    assert dm.num_classes == 80
    check_batch(next(iter(dm.train_dataloader())), 2, 400)
    dm.teardown("fit")  # the stream's workers stopped, as at the end of a run
    val = dm.val_dataloader()
    assert sum(len(b["targets"]) for b in val) == 4
    stop_workers(val)


def test_the_class_count_comes_from_the_data_and_a_given_one_is_checked(coco_folder, monkeypatch):
    dm = coco_files(coco_folder, monkeypatch)  # num_classes null: the annotation file's
    dm.setup("fit")
    assert dm.num_classes == 3 and dm.class_names == ["person", "dog", "toothbrush"]
    dm = coco_files(coco_folder, monkeypatch, num_classes=80)
    with pytest.raises(ValueError, match="data.num_classes=80, but the train source has 3"):
        dm.setup("fit")


def test_a_validation_file_of_other_classes_than_the_training_file_stops_at_start_up(
    coco_folder, monkeypatch
):
    """Two COCO json files declare their own categories: here the validation file's lacks
    `dog` (a labelling tool that exports only the classes used), so its `toothbrush` would be
    label 2, the training set's `dog`."""
    train = coco_folder / "annotations/instances_val2017.json"
    coco = json.loads(train.read_text())
    coco["categories"] = [c for c in coco["categories"] if c["name"] != "dog"]
    coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] != 18]
    val = coco_folder / "annotations/val_without_dogs.json"
    val.write_text(json.dumps(coco))
    dm = coco_files(coco_folder, monkeypatch, val={"annotation_file": str(val)})
    refused = r"validation set's 2 classes are not the training set's 3 in the same order \("
    with pytest.raises(ValueError, match=refused + "label 2: 'dog' in training, 'toothbrush'"):
        dm.setup("fit")
    coco_files(coco_folder, monkeypatch).setup("fit")  # the same file for both: the same classes


def test_the_start_up_says_what_was_read(coco_folder, monkeypatch, hub_parquet, caplog):
    """Once, before the first step: the classes by name, and each split's images, its boxes
    where the source holds its labels (crowds are none), and where they come from. Training
    keeps the 3 images with objects (4 boxes); validation all 4. A stream's length is unknown;
    COCO's 80 names are cut short."""
    dm = coco_files(coco_folder, monkeypatch)
    with caplog.at_level("INFO", logger="frcnn.data.datamodule"):
        dm.setup("fit")
        dm.setup("fit")  # (train.py's start-up, then Lightning's fit)
    read = f"{coco_folder / 'annotations/instances_val2017.json'}, images in {coco_folder}/val2017"
    expected = (
        "Data: 3 classes (person, dog, toothbrush)\n"
        f"  data.train: 3 images, 4 boxes (coco json {read})\n"
        f"  data.val: 4 images, 4 boxes (coco json {read})"
    )
    assert caplog.text.count(expected) == 1, caplog.text
    caplog.clear()
    overrides = {"train": {"data_files": hub_parquet}, "val": {"data_files": hub_parquet}}
    with caplog.at_level("INFO", logger="frcnn.data.datamodule"):
        load("coco", num_workers=0, **overrides).setup("fit")
    first = ", ".join(COCO_CLASSES[:12])
    assert f"Data: 80 classes ({first}, ... (68 more))\n" in caplog.text, caplog.text
    read = f"(hub data_files={list(hub_parquet)!r}, split train)"
    assert f"  data.train: streamed, of a length known only once read {read}\n" in caplog.text


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_workers_warnings_reach_the_main_process_s_loggers(
    coco_folder, monkeypatch, caplog, start_method
):
    """A DataLoader worker's warning (here: the corrupt 4.jpg of validation, skipped) is
    handled by the main process's loggers: the console's handler and train.log are there. A
    worker that Python starts by spawn or forkserver (macOS's default; Linux's from Python
    3.14) inherits no handler: its warnings went to a bare stderr line, and not to train.log."""
    before = multiprocessing.get_start_method()
    multiprocessing.set_start_method(start_method, force=True)
    try:
        dm = coco_files(coco_folder, monkeypatch, num_workers=1, batch_size=4)
        dm.setup("validate")
        with caplog.at_level("WARNING"):
            assert sum(len(batch["targets"]) for batch in dm.val_dataloader()) == 3
            deadline = time.monotonic() + 30  # (a thread hands the worker's records over)
            while "unreadable" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        multiprocessing.set_start_method(before, force=True)
    (record,) = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert record.name == "frcnn.data.sources" and record.processName != "MainProcess"
    assert "unreadable image skipped (image 4 (4.jpg)): " in record.getMessage()


def test_more_workers_than_cores_is_said_once_in_place_of_torchs_warnings(
    coco_folder, monkeypatch, caplog
):
    """A 2-core machine (Colab's) at the default of 4 workers: torch's DataLoader warns at
    every loader; the commands (`quiet_libraries`) leave that out and the data module says it
    once for all its loaders, with what fewer workers would change."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    warn_workers_past_cores.cache_clear()
    dm = coco_files(coco_folder, monkeypatch, num_workers=4, batch_size=2)
    dm.setup("fit")
    with warnings.catch_warnings(record=True) as torchs, caplog.at_level("WARNING"):
        warnings.simplefilter("always")
        dm.val_dataloader()
    assert any("will create 4 worker processes" in str(w.message) for w in torchs), torchs
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING"):
        warnings.simplefilter("always")
        quiet_libraries()
        dm.train_dataloader(), dm.val_dataloader()
    assert not [w for w in caught if "worker processes" in str(w.message)], caught
    said = "data.num_workers=4 is more than the 2 CPU cores this process may use"
    assert caplog.text.count(said) == 1, caplog.text
    assert "data.num_workers=2 would give training other random flips" in caplog.text
    warn_workers_past_cores.cache_clear()


def test_validation_images_that_are_training_images_are_warned_of(coco_folder, monkeypatch, caplog):
    """One COCO json for both splits (as `val: images/train` in a data.yaml): val/map would
    measure memory. Training keeps the 3 images with objects; all 3 are among validation's 4.
    A validation json of other images is not warned of."""
    with caplog.at_level("WARNING"):
        coco_files(coco_folder, monkeypatch).setup("fit")
    warned = "data.val: 3 of its first 4 images are training images (e.g. "
    assert warned in caplog.text and "val2017/1.jpg): val/map will say how well" in caplog.text
    assert "or hold some of the training images out to validate on (data.val_fraction=0.1)" in (
        caplog.text
    )
    file = coco_folder / "annotations/instances_val2017.json"
    coco = json.loads(file.read_text())
    coco["images"] = [image for image in coco["images"] if image["id"] == 3]
    coco["annotations"] = []
    other = coco_folder / "annotations/val_other.json"
    other.write_text(json.dumps(coco))
    caplog.clear()
    with caplog.at_level("WARNING"):
        coco_files(coco_folder, monkeypatch, val={"annotation_file": str(other)}).setup("fit")
    assert "training images" not in caplog.text


def test_classes_without_a_box_to_train_on_are_warned_of(coco_folder, monkeypatch, caplog):
    """A Roboflow COCO export declares its data set's name as category 0, without annotations:
    a class the model has and never learns. A crowd is no box to train on."""
    with caplog.at_level("WARNING"):
        coco_files(coco_folder, monkeypatch).setup("fit")
    assert "no box to train on" not in caplog.text  # each class has one
    file = coco_folder / "annotations/instances_val2017.json"
    coco = json.loads(file.read_text())
    coco["categories"].append({"id": 0, "name": "my-helmets", "supercategory": "none"})
    coco["annotations"] = [a for a in coco["annotations"] if a["id"] not in (4, 5)]
    file.write_text(json.dumps(coco))  # person: its crowd alone
    caplog.clear()
    dm = coco_files(coco_folder, monkeypatch)
    with caplog.at_level("WARNING"):
        dm.setup("fit")
        dm.setup("fit")  # as train.py's start-up, then Lightning's fit, call it: warned once
    warned = "data.train: no box to train on for 2 of its 4 classes ('my-helmets', 'person')"
    assert caplog.text.count(warned) == 1, caplog.text


def test_two_classes_of_one_name_stop_at_start_up(coco_folder, monkeypatch):
    """Two categories named `dog` (two data sets merged): their per-class AP would be logged
    under one key, one overwriting the other, and a checkpoint's classes matched by name."""
    file = coco_folder / "annotations/instances_val2017.json"
    coco = json.loads(file.read_text())
    coco["categories"][0]["name"] = "dog"  # id 90, label 3
    file.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"the classes 2, 3 are all named 'dog': per-class AP"):
        coco_files(coco_folder, monkeypatch).setup("validate")


def test_root_and_class_names_are_given_to_both_sources():
    given = []
    dm = DetectionDataModule(
        lambda transform, **shared: given.append(shared) or SyntheticShapes(transform, 4),
        lambda transform, **shared: given.append(shared) or SyntheticShapes(transform, 4),
        root="/data/voc",
        class_names=["a", "b"],
        num_workers=0,
    )
    dm.setup()
    assert given == [{"root": "/data/voc", "class_names": ["a", "b"]}] * 2


def test_batches_number_the_data_s_classes_as_another_list_names_them():
    """number_as (eval.py on data of some of a checkpoint's classes): labels by name, in the
    batches of worker processes too; a name the list lacks is refused, naming it."""
    dm = DetectionDataModule(
        lambda transform: SyntheticShapes(transform, 8),
        lambda transform: SyntheticShapes(transform, 8, num_classes=3, seed=1),
        num_workers=1,
        batch_size=8,
        persistent_workers=False,
    )
    dm.setup("validate")
    data = dm.class_names
    own = torch.cat([t["labels"] for t in next(iter(dm.val_dataloader()))["targets"]])
    names = ["x", data[2], "y", data[0], data[1]]
    assert dm.number_as(names, [7, 8, 9, 10, 11]) == {1: 4, 2: 5, 3: 2}
    assert (dm.class_names, dm.category_ids, dm.num_classes) == (names, [7, 8, 9, 10, 11], 5)
    numbered = torch.cat([t["labels"] for t in next(iter(dm.val_dataloader()))["targets"]])
    assert numbered.tolist() == [[0, 4, 5, 2][label] for label in own.tolist()]
    first = dm.val_set[0][1]
    assert dm.relabel(first)["labels"].tolist() == numbered[: len(first["labels"])].tolist()
    with pytest.raises(ValueError, match=rf"the data's classes {data[1]!r} are not among"):
        dm.number_as(["x", data[0], data[2]])


def test_validation_images_are_not_flipped_and_training_ones_may_be():
    dm = DetectionDataModule(
        lambda transform: SyntheticShapes(transform, 4),
        lambda transform: SyntheticShapes(transform, 4),
        flip_prob=1.0,
        num_workers=0,
    )
    dm.setup()
    assert dm.train_set.transform.flip_prob == 1.0
    assert dm.val_set.transform.flip_prob == 0.0


def test_the_calibration_images_are_the_training_ones_in_order_as_validation_loads_them():
    """What calibrates an int8 export: the training source's images in its order, no flips
    or jitter (the training loader shuffles and flips), the same on every pass."""
    dm = DetectionDataModule(
        lambda transform: SyntheticShapes(transform, 8, seed=3),
        lambda transform: SyntheticShapes(transform, 4),
        batch_size=4,
        flip_prob=1.0,
        num_workers=0,
    )
    dm.setup("validate")
    first = [batch["images"] for batch in dm.calibration_dataloader()]
    unaugmented = SyntheticShapes(dm.val_transform, 8, seed=3)
    assert torch.equal(torch.cat(first), torch.stack([unaugmented[i][0] for i in range(8)]))
    assert all(map(torch.equal, first, (b["images"] for b in dm.calibration_dataloader())))
    dm.setup("fit")
    trained_on = next(iter(dm.train_dataloader()))["images"]
    assert not any(torch.equal(trained_on[i], first[0][0]) for i in range(4))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"image_size": -1}, "image_size"),
        ({"resize": "crop"}, "resize"),
    ],
)
def test_misconfiguration_fails_at_start_up(kwargs, key):
    with pytest.raises((ValueError, InstantiationException), match=key):
        load("synthetic", **kwargs)


def test_a_sources_setting_is_named_as_the_config_names_it(
    coco_folder, monkeypatch, hub_parquet, tmp_path
):
    """Sources name their settings bare, as a Python caller gives them; the data module names
    the split's (`data.val.annotation_file`) or the data config's (`data.num_classes`)."""
    monkeypatch.setenv("COCO_ROOT", str(coco_folder))  # (it has a val2017 split only)
    val = {"annotation_file": str(coco_folder / "annotations/instances_val2017.json")}
    with pytest.raises(FileNotFoundError, match=r"^data.train.annotation_file='.*': no such f"):
        load("coco_files", val=val).setup("fit")
    with pytest.raises(FileNotFoundError, match=r"^data.val.image_dir='.*nowhere': no such f"):
        load("coco_files", val=val | {"image_dir": str(coco_folder / "nowhere")}).setup("val")
    with pytest.raises(FileNotFoundError, match=r"^data.val.data_files: no such local file"):
        val = {"data_files": [str(coco_folder / "val-*.parquet")]}
        load("coco", train={"data_files": hub_parquet}, val=val).setup("fit")
    with pytest.raises(ValueError, match=r"^data.train.num_images=0: must lie in \[1, inf\)"):
        load("synthetic", train={"num_images": 0}).setup("fit")
    # a string: '<=' between it and an int failed as a TypeError, with a traceback
    with pytest.raises(ValueError, match=r"^data.val.num_images='abc': must be an integer in"):
        load("synthetic", val={"num_images": "abc"}).setup("fit")
    with pytest.raises(ValueError, match=r"^data.num_classes=99: must lie in \[1, 24\]"):
        load("synthetic", num_classes=99).setup("fit")
    voc = tmp_path / "voc"
    with pytest.raises(FileNotFoundError, match=r"^data.root='.*voc': no .*train.txt, nor"):
        load("voc", root=str(voc)).setup("fit")
    (voc / "ImageSets/Main").mkdir(parents=True)
    (voc / "ImageSets/Main/train.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=r"^data.val.split='vall': no .* \['train'\]"):
        load("voc", root=str(voc), val={"split": "vall"}).setup("validate")


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("coco_files", {"train": {"keep_empty": "no"}}, "data.train.keep_empty='no'"),
        ("yolo", {"root": "yolo", "train": {"keep_empty": 0}}, "data.train.keep_empty=0"),
        ("voc", {"root": "voc", "train": {"keep_empty": "off"}}, "data.train.keep_empty='off'"),
        ("hub", {"train": {"data_files": "x", "shuffle": "no"}}, "data.train.shuffle='no'"),
        ("hub", {"train": {"data_files": "x"}, "normalized": "no"}, "data.normalized='no': must"),
        ("coco", {"train": {"limit": "abc"}}, r"data.train.limit='abc': must be an integer in \[1"),
        ("coco", {"train": {"retries": -1}}, r"data.train.retries=-1: must lie in \[0, inf\)"),
        ("coco", {"train": {"backoff_s": -1}}, r"data.train.backoff_s=-1: must lie in \[0, inf"),
        ("coco", {"train": {"shuffle_buffer": 0}}, r"data.train.shuffle_buffer=0: must lie in \[1"),
        # a traceback from NumPy (the hub's shuffle), every image "unreadable" (synthetic)
        ("hub", {"train": {"data_files": "x", "seed": -1}}, r"data.train.seed=-1: must lie in \[0"),
        ("synthetic", {"val": {"seed": "abc"}}, r"data.val.seed='abc': must be an integer in \[0"),
        # one name, read letter by letter before: "add them, e.g. [p,e,r,s,o,n,car]"
        (
            "voc",
            {"root": "voc", "class_names": "person"},
            r"data.class_names='person': a list of "
            r"names, e.g. data.class_names=\[person\]",
        ),
        (
            "voc",
            {"root": "voc", "class_names": []},
            r"data.class_names=\[\]: give the names, or null",
        ),
        ("hub", {"class_names": [0, 1]}, r"data.class_names=\[0, 1\]: .*=\['0','1'\]\"$"),
        # a path Hydra reads as a number (a traceback from pathlib before)
        ("yolo", {"root": 2024}, "data.root=2024: Hydra read a number, not a path; .* ./2024"),
        ("voc", {"root": 2024}, "data.root=2024: Hydra read a number"),
        ("coco_files", {"train": {"annotation_file": 5}}, "data.train.annotation_file=5: Hydra"),
        ("hub", {"train": {"data_files": 5}}, "data.train.data_files=5: Hydra read a number"),
        # a split that is no name: a traceback from pathlib (voc), a dict key unasked (hub)
        ("voc", {"root": "voc", "train": {"split": 2007}}, r"data.train.split=2007: give the spl"),
        ("yolo", {"root": "yolo", "train": {"split": None}}, r"data.train.split=null: give"),
        (
            "hub",
            {"train": {"data_files": "x", "split": ["train"]}},
            r"data.train.split=\['train'\]",
        ),
    ],
)
def test_a_sources_flag_count_or_path_is_checked_before_the_data_is_read(name, overrides, message):
    """A word Hydra reads as a string (`keep_empty=no`) is true to Python: it kept the images it
    was to leave out, without a word."""
    with pytest.raises((ValueError, InstantiationException)) as error:
        load(name, **overrides).setup("fit")
    assert re.match(message, str(error.value.__cause__ or error.value)), error.value


def test_every_training_epoch_reshuffles_the_data():
    """StreamEpoch (which the app adds to every trainer) hands each epoch to the data module;
    through Lightning's own loop: tests/app/test_train.py's resume test."""
    epochs = []
    dm = DetectionDataModule(
        lambda transform: SyntheticShapes(transform, 4),
        lambda transform: SyntheticShapes(transform, 4),
        num_workers=0,
    )
    dm.set_epoch = epochs.append
    StreamEpoch().on_train_epoch_start(SimpleNamespace(datamodule=dm, current_epoch=4), None)
    assert epochs == [4]


def test_every_validation_image_once_over_processes_of_unequal_shares():
    from frcnn.data.datamodule import EveryNth

    shares = [list(EveryNth(range(5), num_replicas=2, rank=rank)) for rank in range(2)]
    assert shares == [[0, 2, 4], [1, 3]]  # no image repeated to even them out
    assert [len(EveryNth(range(5), num_replicas=2, rank=rank)) for rank in range(2)] == [3, 2]


def test_processes_streaming_unequal_parts_stop_at_the_batches_all_have(tmp_path):
    """Two real processes over gloo, with 4 and 2 batches: both take 2, every epoch; with 3 and
    none: both stop at once, with the error (not one waiting for the other)."""
    from frcnn.data.datamodule import StreamedBatches

    def epochs(rank: int) -> list:
        loaders = [DataLoader(range([4, 2][rank])), DataLoader(range([3, 0][rank]))]
        taken = [[int(b) for b in StreamedBatches(loaders[0])] for _ in range(2)]
        with pytest.raises(ValueError, match="no full batch of data.batch_size=1") as error:
            list(StreamedBatches(loaders[1]))
        return taken, "on one of the processes" in str(error.value)

    assert in_two_processes(epochs, tmp_path) == [([[0, 1], [0, 1]], True)] * 2


def test_a_streamed_epoch_has_full_batches_only_and_at_least_one(hub_parquet):
    """Two workers, a shard of 6 images each: batches of 4 take 4 of each shard (the short
    batch of the other 2 is dropped); batches of 8 leave none, which fails, saying why."""
    local = {"train": {"data_files": hub_parquet}, "val": {"data_files": hub_parquet, "limit": 1}}
    dm = load("coco", num_workers=2, batch_size=4, **local)
    dm.setup("fit")
    sizes = [len(batch["targets"]) for batch in dm.train_dataloader()]
    dm.teardown("fit")  # the stream's workers stopped, as at the end of a run
    assert sizes == [4, 4]
    dm = load("coco", num_workers=2, batch_size=8, **local)
    dm.setup("fit")
    with pytest.raises(ValueError, match="no full batch of data.batch_size=8 .* 2 DataLoader"):
        list(dm.train_dataloader())
    dm.teardown("fit")


def test_a_training_set_smaller_than_a_batch_fails_at_start_up():
    dm = load("synthetic", num_workers=0, batch_size=4, train={"num_images": 3})
    dm.setup("fit")
    with pytest.raises(ValueError, match="data.batch_size=4, but the training set has 3 images"):
        dm.train_dataloader()
