"""The README's tables of what the checkout holds name all of it and only what is there: the
modules of `src/frcnn` ("How the code is laid out"), the config groups of `conf/`
("Configuration") and the detector's settings ("The detector in Python"). A module, option or
setting added, moved or renamed without its row fails here."""

import re
from pathlib import Path

from omegaconf import OmegaConf

ROOT = Path(__file__).parents[1]


def readme_section(title: str) -> str:
    return (ROOT / "README.md").read_text().split(f"\n## {title}\n")[1].split("\n## ")[0]


def layout_names() -> list[str]:
    """The paths the README's "How the code is laid out" table gives in its first column; a
    cell's later names (`coco_folder.py`) are in its first name's folder."""
    names = []
    for cell in re.findall(r"^\| (`[^|]+`) \|", readme_section("How the code is laid out"), re.M):
        first, *others = re.findall(r"`([^`]+)`", cell)
        folder = first if first.endswith("/") else first.rpartition("/")[0] + "/"
        names += [first, *(folder + name for name in others)]
    return names


def test_the_layout_table_names_every_module_and_no_other():
    named = layout_names()
    assert "src/frcnn/data/coco_folder.py" in named  # (a later name of a cell, in its folder)
    missing = [name for name in named if not (ROOT / name).exists()]
    assert not missing, f"the README's layout table names what is not there: {missing}"
    folders = tuple(name for name in named if name.endswith("/"))
    modules = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "src" / "frcnn").rglob("*.py")
        if path.name != "__init__.py"
    )
    unnamed = [m for m in modules if m not in named and not m.startswith(folders)]
    assert not unnamed, f"modules the README's layout table leaves out: {unnamed}"


def test_the_config_group_table_lists_every_group_and_option_of_conf():
    """The "Configuration" table: a row per group a user picks from (all of `conf/` but Hydra's
    own settings and `paths`, set by key), every option file of it named, no other."""
    rows = dict(re.findall(r"^\| `(\w+)` \| (.+) \|$", readme_section("Configuration"), re.M))
    groups = {
        folder.name: sorted(path.stem for path in folder.glob("*.yaml"))
        for folder in (ROOT / "conf").iterdir()
        if folder.is_dir() and folder.name not in ("hydra", "paths")
    }
    assert sorted(rows) == sorted(groups)
    for group, options in groups.items():
        # an option's name, not a key=value or a path (a number is Hydra's, not a file)
        named = {
            n for n in re.findall(r"`([^`]+)`", rows[group]) if re.fullmatch(r"(?!\d+$)[\w-]+", n)
        }
        assert named == set(options), group


def test_the_detectors_table_lists_every_setting_of_the_papers_model_config():
    """ "The detector in Python": a row per top-level argument of `conf/model/resnet50_fpn.yaml`
    (the anchors' from `conf/anchors/fpn.yaml`), and a dict argument's row names its keys."""
    config = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/model/resnet50_fpn.yaml"))
    config["anchors"] = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/anchors/fpn.yaml"))
    arguments = {
        k: v for k, v in config.items() if k not in ("_target_", "_convert_", "num_classes")
    }
    table = readme_section("The detector in Python")
    rows = dict(re.findall(r"^\| `(\w+)` \| (.+) \|$", table, re.M))
    assert sorted(rows) == sorted(arguments)
    for name, value in arguments.items():
        if isinstance(value, dict):
            assert set(re.findall(r"`(\w+)`", rows[name])) == set(value), name
