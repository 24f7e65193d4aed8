"""visualize.py: each picture, with random weights on a synthetic sample."""

import pytest
from PIL import Image

from frcnn.app import visualize
from frcnn.figures import DPI, SIZES, WHAT
from tests.app.helpers import composed, run

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
