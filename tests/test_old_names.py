"""Configs and scripts written for the flat layout before the packages still run: the old module
names import the same classes and functions."""

import importlib
import re
from pathlib import Path

import pytest
from hydra.utils import get_class, get_method, instantiate

from frcnn import MOVED, MOVED_NAMES


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_name_gives_the_new_modules_objects(old):
    new = importlib.import_module(MOVED[old])
    before = importlib.import_module(old)
    public = [name for name in vars(new) if not name.startswith("_")]
    assert public and all(getattr(before, name) is getattr(new, name) for name in public)


def test_names_that_left_their_module_are_found_under_its_old_name():
    for (old, name), where in MOVED_NAMES.items():
        assert getattr(importlib.import_module(old), name) is getattr(
            importlib.import_module(where), name
        )


def test_old_targets_of_a_config_instantiate():
    """The `_target_`s train.yaml, callbacks/*.yaml and hydra/default.yaml named before."""
    ema = instantiate({"_target_": "frcnn.callbacks.WeightEMA", "decay": 0.9})
    assert type(ema) is get_class("frcnn.training.callbacks.WeightEMA") and ema.decay == 0.9
    images = instantiate({"_target_": "frcnn.callbacks.DetectionImages", "num_images": 2})
    assert type(images).__module__ == "frcnn.visualization.tensorboard"
    assert get_class("frcnn.module.DetectorModule") is get_class(
        "frcnn.training.module.DetectorModule"
    )
    assert get_method("frcnn.lr_schedule.warmup_decay") is get_method(
        "frcnn.training.lr_schedule.warmup_decay"
    )
    assert get_class("frcnn.sweep.SweepSummary").__module__ == "frcnn.training.sweep"


def test_the_project_itself_names_only_the_new_modules():
    """The old names are for configs and scripts of others: an old name imports a copy of its
    module's namespace, which a test's monkeypatch of the new module would not reach."""
    root = Path(__file__).parents[1]
    old = "|".join(re.escape(name) for name in MOVED)
    parts = "|".join(re.escape(name.rpartition(".")[2]) for name in MOVED)
    pattern = re.compile(rf"(?<![\w.])({old})(?![\w])|from frcnn(\.model)? import ({parts})\b")
    files = [*root.glob("src/**/*.py"), *root.glob("tests/**/*.py"), *root.glob("bench/*.py")]
    files += [*root.glob("conf/**/*.yaml"), root / "README.md"]
    mentions = [
        f"{path.relative_to(root)}: {match.group(0)}"
        for path in files
        if path not in (Path(__file__), root / "src" / "frcnn" / "__init__.py")
        for match in pattern.finditer(path.read_text())
    ]
    assert not mentions
