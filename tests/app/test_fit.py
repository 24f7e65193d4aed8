"""frcnn.fit: a user's script training on torch Datasets, as train.py trains on a config."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch
import yaml

from frcnn.data import SyntheticShapes
from tests.app.helpers import ROOT, SMALL_MODEL, readme_blocks, run, run_dirs, run_script

# a user's script: synthetic shapes as a torchvision-convention Dataset
SCRIPT = """
import torch

import frcnn
from frcnn.data import DetectionDataModule
from frcnn.data.synthetic import draw_sample


class Shapes(torch.utils.data.Dataset):
    def __init__(self, count, seed):
        self.count, self.seed = count, seed

    def __len__(self):
        return self.count

    def __getitem__(self, i):
        record = draw_sample(self.seed, i, 3)
        boxes, labels = torch.from_numpy(record.boxes), torch.from_numpy(record.labels)
        return record.image, {"boxes": boxes, "labels": labels}


if __name__ == "__main__":
    data = DetectionDataModule.from_datasets(
        Shapes(8, 0), Shapes(4, 1), ["red rectangle", "green ellipse", "blue triangle"],
        image_size=96, batch_size=4, num_workers=0,
    )
    frcnn.fit(data, "trainer.max_epochs=2", "trainer.log_every_n_steps=1")
"""


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mine")
    (folder / "my_data.py").write_text(SCRIPT)
    return folder / "my_data.py"


def test_a_script_trains_checkpoints_and_reports_as_train_py(script):
    out = run_script(script, [*SMALL_MODEL, "device=cpu"], script.parent)
    printed = out.stdout + out.stderr
    assert "train finished" in printed and "best checkpoint:" in printed
    # the model summary by stage, without Lightning's FLOPs (0 without an example input)
    assert "| model.roi_heads " in printed and "Frozen params" in printed
    assert "flops" not in printed.lower()
    (run,) = run_dirs(script.parent / "logs")
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert config["data"]["train"]["_target_"] == "frcnn.data.DatasetSource"
    assert (config["data"]["image_size"], config["data"]["batch_size"]) == (96, 4)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["config"]["data"]["num_classes"] == 3 == last["config"]["model"]["num_classes"]
    assert last["global_step"] == 4 and last["class_names"][1] == "green ellipse"
    assert any((run / "checkpoints").glob("epoch*.ckpt"))  # the best on val/map
    assert "val/map" in json.loads((run / "metrics.json").read_text())["metrics"]
    assert (run / "report" / "index.md").is_file() and (run / "train.log").is_file()

    # resumed by the script's own argument, in its folder
    checkpoint = f"ckpt_path={run}/checkpoints/last.ckpt"
    resumed = run_script(script, [*SMALL_MODEL, "device=cpu", "trainer.max_epochs=3", checkpoint],
                         script.parent)  # fmt: skip
    assert "Resuming in" in resumed.stdout + resumed.stderr
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6

    # eval.py cannot rebuild data given in Python: it asks for the data
    with pytest.raises(AssertionError, match="a config cannot rebuild it: give the data"):
        run_script(ROOT / "eval.py", [checkpoint, "device=cpu"], script.parent)


def test_the_data_settings_are_the_data_module_s(script):
    message = r"'data.batch_size=2': the data's settings are the data module's own"
    with pytest.raises(AssertionError, match=message):
        run_script(script, [*SMALL_MODEL, "device=cpu", "data.batch_size=2"], script.parent)


def test_what_is_not_a_data_module_or_an_override_string_is_refused_saying_what_to_give():
    import frcnn
    from frcnn.data import DetectionDataModule

    dataset = torch.utils.data.TensorDataset(torch.zeros(1))  # (not yet a data module)
    with pytest.raises(TypeError, match=r"a DetectionDataModule \(.*from_datasets.*TensorDataset"):
        frcnn.fit(dataset)
    data = DetectionDataModule.from_datasets([], [], ["a"], num_workers=0)
    with pytest.raises(TypeError, match=r"one argument each .*got \['trainer.max_epochs=1'\]"):
        frcnn.fit(data, ["trainer.max_epochs=1"])  # (a list, not its strings)


class OwnSource(SyntheticShapes):
    """A user's own source class: 8 synthetic images of 3 classes per split, and the `root`
    that the data module gives every source."""

    def __init__(self, transform, root: str, split: str):
        super().__init__(transform, num_images=8, num_classes=3, seed=int(split == "val"))
        self.root = root


def test_a_data_yaml_of_one_s_own_names_only_its_sources(tmp_path):
    """The README's data yaml ("Training on your own data"), its source class this test's: it
    extends conf/data/base.yaml, so the data module's keys, and their overrides, are there."""
    own = readme_blocks("yaml")["## Training on your own data"]
    assert own.startswith("# conf/data/mine.yaml") and own.count("my_package.MySource") == 2
    (tmp_path / "conf" / "data").mkdir(parents=True)
    (tmp_path / "conf" / "data" / "mine.yaml").write_text(
        own.replace("my_package.MySource", "tests.app.test_fit.OwnSource")
    )
    small = ["data.image_size=64", "data.batch_size=2", "data.num_workers=0", "device=cpu"]
    run("train.py", f"hydra.searchpath=[file://{tmp_path}/conf]", "data=mine", *small,
        *SMALL_MODEL, "trainer.max_steps=2", log_dir=tmp_path / "logs")  # fmt: skip
    (run_dir,) = run_dirs(tmp_path / "logs")
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    data = last["config"]["data"]
    assert data["train"] == {"_target_": "tests.app.test_fit.OwnSource", "_partial_": True,
                             "split": "train", "repeat_factor_threshold": None}  # fmt: skip
    assert (data["batch_size"], data["root"], data["num_classes"]) == (2, "/data/mine", 3)
    assert last["global_step"] == 2


# frcnn.fit's config tree, as the wheel's own frcnn (first on the path) composes it
COMPOSE = """
from hydra import compose, initialize_config_dir
from frcnn.app.fit import CONFIG_DIR
with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
    cfg = compose("train", ["data=python"])
print(CONFIG_DIR, cfg.data.train._target_)
"""


def test_an_installed_wheel_carries_the_config_tree_that_fit_composes(tmp_path):
    """`pip install <repo>` installs a wheel, not the checkout, whose conf/ is beside src/:
    the wheel holds the whole tree inside the package, where frcnn.fit finds it."""
    uv = os.environ.get("UV") or shutil.which("uv")  # (`uv run` names itself in UV)
    subprocess.run([uv, "build", "-q", "--wheel", "-o", tmp_path, ROOT], check=True)
    (wheel,) = tmp_path.glob("frcnn-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    inside = site / "frcnn" / "conf"
    files = {p.relative_to(ROOT / "conf") for p in (ROOT / "conf").rglob("*") if p.is_file()}
    assert {p.relative_to(inside) for p in inside.rglob("*") if p.is_file()} == files
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", COMPOSE], env=env, capture_output=True,
                         text=True, check=True, cwd=tmp_path)  # fmt: skip
    assert out.stdout.split() == [str(inside), "frcnn.data.DatasetSource"], out.stderr
