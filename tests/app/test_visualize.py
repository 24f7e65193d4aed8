"""visualize.py: each picture, with random weights on a synthetic sample."""

import importlib
import logging
import re

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from frcnn.app import visualize
from frcnn.boxes import content_sizes
from frcnn.visualization.canvas import DPI
from frcnn.visualization.inspection import SIZES, WHAT
from tests.app.helpers import composed, refused, run
from tests.data.conftest import hub_row, write_hub_parquet

SMALL_MODEL = ["model.fpn_channels=32", "data.image_size=128", "data.num_workers=0", "device=cpu"]


@pytest.mark.parametrize("what", WHAT)
def test_each_picture_is_written_at_its_size(what, tmp_path):
    cfg = composed(
        tmp_path, f"what={what}", f"output={tmp_path}", *SMALL_MODEL, config_name="visualize"
    )
    png = visualize(cfg)
    assert png == tmp_path / f"{what}.png" and png.stat().st_size > 10_000
    width, height = SIZES[what]
    assert Image.open(png).size == (round(width * DPI), round(height * DPI))


def test_what_dataset_counts_the_validation_boxes_against_the_anchors(tmp_path):
    """The first 12 images, read by the validation loader's 2 workers in batches of 5."""
    loader = ["data.num_workers=2", "data.batch_size=5"]
    cfg = composed(
        tmp_path, "what=dataset", "limit=12", f"output={tmp_path}", *SMALL_MODEL[:-2], *loader,
        "device=cpu", config_name="visualize",
    )  # fmt: skip
    png = visualize(cfg)
    assert png == tmp_path / "dataset.png" and png.stat().st_size > 10_000
    datamodule = instantiate(cfg.data)
    datamodule.setup("validate")
    targets = [datamodule.val_set[i][1] for i in range(12)]
    text = (tmp_path / "dataset.md").read_text()
    boxes = sum(len(t["boxes"]) for t in targets)
    assert text.startswith(f"12 images, {boxes} boxes")
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")]
    rows = [row for row in rows if row[1].isdigit()]  # the table's body: side range, boxes, ...
    assert len(rows) == 7
    assert sum(int(row[1]) for row in rows) == boxes


@pytest.mark.parametrize("data", ["data=coco", "data=hub"])
@pytest.mark.parametrize("what", ["labels", "dataset"])
def test_the_data_pictures_of_a_streamed_data_set(data, what, tmp_path, caplog):
    """The streamed configs take the run's seed for their shuffle (visualize.yaml has one)."""
    rows = [hub_row(i, 200, 100, [[10.0, 20.0, 50.0, 60.0]], [i % 3]) for i in range(4)]
    files = write_hub_parquet(tmp_path / "train-00000-of-00001.parquet", rows)
    cfg = composed(
        tmp_path, f"what={what}", data, f"data.train.data_files={files}",
        f"data.val.data_files={files}", f"output={tmp_path}", *SMALL_MODEL,
        *(["data.box_format=xyxy"] if data == "data=hub" else []), config_name="visualize",
    )  # fmt: skip
    with caplog.at_level(logging.INFO, "frcnn.app.visualize"):
        assert visualize(cfg) == tmp_path / f"{what}.png"
    if what == "labels":
        assert "labels.png: 4 training images, 4 boxes" in caplog.text


def test_visualize_py_on_an_image_file_without_ground_truth(tmp_path):
    image = tmp_path / "photo.png"
    Image.new("RGB", (300, 200), (90, 120, 150)).save(image)
    overrides = ["what=proposals", f"image={image}", f"output={tmp_path}", *SMALL_MODEL]
    run("visualize.py", *overrides, log_dir=tmp_path / "logs")
    assert (tmp_path / "proposals.png").is_file()


def test_assignments_need_ground_truth(tmp_path):
    image = tmp_path / "photo.png"
    Image.new("RGB", (300, 200)).save(image)
    cfg = composed(
        tmp_path, "what=assignments", f"image={image}", *SMALL_MODEL, config_name="visualize"
    )
    with pytest.raises(ValueError, match="ground truth"):
        visualize(cfg)


def test_proposals_are_drawn_inside_the_images_content(tmp_path):
    """A landscape photo letterboxed to a square: no proposal in the padding below it."""
    from frcnn.inference.predictor import Predictor
    from frcnn.visualization.inspection import make_figure

    cfg = composed(tmp_path, *SMALL_MODEL, config_name="visualize")
    model = instantiate({**cfg.model, "backbone": {**cfg.model.backbone, "weights": None}})
    predictor = Predictor(model, 128, device="cpu")
    image, target = predictor.prepare(np.full((100, 300, 3), 120, np.uint8))
    size = content_sizes([target])[0]
    assert size.tolist() == [43, 128]
    figure = make_figure("proposals", predictor.model, image, size, top_n=200)
    for ax in figure.axes:
        bottoms = [patch.get_y() + patch.get_height() for patch in ax.patches]
        assert bottoms and max(bottoms) <= 43 + 1e-3


def test_a_checkpoints_picture_uses_its_data_settings(trained, tmp_path, monkeypatch):
    """Without data=, a checkpoint is drawn on its own validation data at its own size, and
    what=labels draws its own training data."""
    command = importlib.import_module("frcnn.app.visualize")  # the module, not the function

    _, run_dir = trained
    seen = {}

    def record(what, model, image, size, target, *args):
        seen.update(image=image.shape, size=size.tolist(), boxes=len(target["boxes"]))
        return make_real(what, model, image, size, target, *args)

    make_real = command.make_figure
    monkeypatch.setattr(command, "make_figure", record)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    run("visualize.py", f"ckpt_path={ckpt}", "what=assignments", f"output={tmp_path}",
        "device=cpu", log_dir=tmp_path / "logs")  # fmt: skip
    assert seen["image"] == (3, 96, 96)  # TINY trains at 96 px; the visualize default is 192
    assert (tmp_path / "assignments.png").is_file()
    run("visualize.py", f"ckpt_path={ckpt}", "what=detections", "data.image_size=64",
        f"output={tmp_path}", "device=cpu", log_dir=tmp_path / "logs")  # fmt: skip
    assert seen["image"] == (3, 64, 64)  # data.<key> on top of the checkpoint's

    def grid(samples, names):
        seen.update(labels=samples[0][0].shape)
        return real_grid(samples, names)

    real_grid = command.label_grid
    monkeypatch.setattr(command, "label_grid", grid)
    run("visualize.py", f"ckpt_path={ckpt}", "what=labels", f"output={tmp_path}", "device=cpu",
        log_dir=tmp_path / "logs")  # fmt: skip
    assert seen["labels"] == (3, 96, 96)  # its training data (the default data's 192 px before)


def test_an_index_beyond_the_validation_set_is_refused(tmp_path):
    with pytest.raises(AssertionError, match="index=100: the validation set has 8 images"):
        run("visualize.py", "index=100", "data.val.num_images=8", *SMALL_MODEL,
            f"output={tmp_path}", log_dir=tmp_path)  # fmt: skip


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        # an FPN level beyond the model's five (P2..P6): an IndexError deep in the drawing before
        ("what=anchors level=5", r"level=5: must lie in \[0, 4\]"),
        ("what=proposals top_n=0", r"top_n=0: must lie in \[1, inf\)"),
        ("dpi=0", r"dpi=0: must lie in \[1, inf\)"),
        ("what=dataset limit=0", r"limit=0: must lie in \[1, inf\)"),
        # the streamed sets' shuffle: a traceback from NumPy before
        ("what=labels seed=-1", r"seed=-1: must lie in \[0, 4294967295\]"),
        ("index=abc", r"index='abc': must be an integer in \[0, inf\)"),  # a TypeError before
        # a missing file or one that is no image: a traceback before
        ("what=proposals image=nowhere.jpg", r"image='nowhere.jpg': no such file"),
        ("what=proposals image=README.md", r"image='README.md' cannot be read \(Unidentified"),
    ],
)
def test_a_picture_setting_out_of_range_is_refused_naming_it(tmp_path, setting, message):
    printed = refused("visualize.py", *setting.split(), "data.val.num_images=8", *SMALL_MODEL,
                      f"output={tmp_path}", log_dir=tmp_path)  # fmt: skip
    assert re.search(message, printed), printed
