"""What the README names is there: its tables name all of the checkout's modules of
`src/frcnn` ("How the code is laid out"), config groups of `conf/` ("Configuration") and the
detector's settings ("The detector in Python"), and no other; every setting its text names is
one a command has, and every section it refers to is there. A module, option, setting or
section added, moved or renamed without the README fails here."""

import re
from pathlib import Path

from hydra import compose, initialize_config_dir
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


# the README's example of a misspelt setting, which the command refuses ("Configuration")
MISSPELT = {"trainer.max_epoch"}
# the configs a setting the README names may belong to: train's with each data config and the
# group options that add settings, and the other commands'
ADDING = ["device=ddp", "callbacks=early_stopping", "ema=on", "hydra/launcher=slurm"]
ADDING += ["hparams_search=nms_iou_optuna"]
COMPOSED = [
    *[
        ("train", [f"data={path.stem}", *ADDING])
        for path in (ROOT / "conf" / "data").glob("*.yaml")
    ],
    *[(command, []) for command in ("eval", "predict", "export", "visualize")],
]


def test_every_setting_the_readme_names_is_one_a_command_has():
    """A dotted setting in the README's text and commands (`data.train.retries`,
    `model.rpn.nms_thresh=0.6`) is a key of a config a command composes: one renamed or
    never declared (which Hydra refuses without a `+`) fails here. File names are not."""
    # (not in its python blocks, whose `model.eval()` is an attribute)
    text = re.sub(r"^```python\n.*?^```\n", "", (ROOT / "README.md").read_text(), flags=re.M | re.S)
    groups = "data|model|module|trainer|callbacks|logger|ema|hydra|paths"
    named = set(re.findall(rf"(?<![\w./$-])((?:{groups})(?:\.\w+)+)", text))
    named = {n for n in named if not re.search(r"\.(onnx|xml|pt2|bin|yaml)$", n)} - MISSPELT
    keys = set()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        for name, overrides in COMPOSED:
            config = compose(name, overrides, return_hydra_config=True)
            keys |= dotted_keys(OmegaConf.to_container(config, resolve=False))
    assert "data.train.annotation_file" in named and "hydra.sweeper.n_trials" in named
    assert sorted(named - keys) == []


def dotted_keys(config: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in config.items():
        keys.add(prefix + str(key))
        if isinstance(value, dict):
            keys |= dotted_keys(value, f"{prefix}{key}.")
    return keys


def test_every_section_the_readmes_refer_to_is_there():
    """A section named in quotes ("Evaluating a checkpoint", bench/README.md's "Fine-tuning") is
    a heading of the README or bench/README.md (or its part before a colon), or a paragraph's
    bold run-in heading: a renamed section's references fail here."""
    sections, named = set(), set()
    for name in ("README.md", "bench/README.md"):
        # (not in code: a block's comments, `weights="DEFAULT"`)
        text = re.sub(r"^```.*?^```\n", "", (ROOT / name).read_text(), flags=re.M | re.S)
        headings = [line.lstrip("#").strip() for line in text.splitlines() if line[:1] == "#"]
        sections |= {*headings, *(h.partition(":")[0] for h in headings)}
        sections |= {b.rstrip(".:") for b in re.findall(r"\*\*([^*]+?)\*\*", text)}
        named |= set(re.findall(r'"([A-Z][^"\n]{2,80})"', re.sub(r"`[^`]*`", "", text)))
    assert "Evaluating a checkpoint" in named
    assert sorted(named - sections) == []
