"""The command line's settings, checked and explained before a command's task runs.

- `--help` (conf/hydra/default.yaml's help template): the entry point's docstring, its config
  file as written, each setting with its comment, and the options of each config group it
  chooses from (`command_help`);
- a top-level setting that the command line adds (`+key=value`, as Hydra's error for a
  misspelled setting advises) and that nothing would read: refused, naming the nearest setting
  (`refuse_unread_settings`); a nested one that its object does not take: named, with the
  nearest setting beside it (`refused_keyword`); a mandatory one (`???`) not given: named
  (`refuse_missing_settings`); a `data.val.` setting beside `data.val_fraction`, which leaves
  data.val unread: refused (`refuse_unread_validation`).
"""

import difflib
import re
import sys
from pathlib import Path

from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

from frcnn.app.build import shown
from frcnn.training.checkpoint import entries, interpolations


def command_help() -> str:
    """What `--help` prints (conf/hydra/default.yaml's help template; Hydra's default page lists
    every group of the tree and the settings without their comments): the entry point's
    docstring (what it does, how it is run), its config file as written, each setting with its
    comment (and those of the file it extends: train.yaml for eval.yaml), and the options of
    each config group the command chooses from."""
    hydra = HydraConfig.get()
    folder = next(s.path for s in hydra.runtime.config_sources if s.provider == "main")
    files = config_files(Path(folder) / f"{hydra.job.config_name}.yaml")
    sections = [(sys.modules["__main__"].__doc__ or "").strip()]
    for file in files:
        if file == files[0]:
            sections.append(f"== Settings (key=value; nested: a.b=value): {shown(file)} ==")
        else:
            sections.append(f"== {shown(file)}, which it extends ==")
        sections.append(file.read_text().strip())
    sections += [
        "== Config groups (group=option): the chosen one; the others ==",
        "\n".join(group_options(hydra.runtime.choices)),
        f"A group's settings, each with its comment: {shown(folder)}/<group>/<option>.yaml.\n"
        "`--cfg job` after the command prints every setting as composed, the groups' too.\n"
        "Powered by Hydra (https://hydra.cc); --hydra-help shows Hydra's own flags.",
    ]
    return "\n\n".join(sections).replace("$", "$$")  # the template's placeholders are not used


# options of a group that no one chooses on the command line, said apart: the data configs'
# base, and the config that frcnn.fit selects for torch Datasets given in Python
NOT_CHOSEN = {"data": {"base": "what they extend", "python": "frcnn.fit's"}}


def group_options(choices: DictConfig) -> list[str]:
    """A line per config group of `choices` (Hydra's {group: option chosen}), Hydra's own left
    out: `device  auto; or cpu, ddp, gpu`; those of `NOT_CHOSEN` said apart, in brackets."""
    loader = GlobalHydra.instance().config_loader()
    groups = sorted(g for g in choices if g != "hydra" and not g.startswith("hydra/"))
    width = max(map(len, groups), default=0)
    lines = []
    for group in groups:
        chosen, apart = choices[group] or "none", NOT_CHOSEN.get(group, {})
        options = [o for o in loader.get_group_options(group) if o != chosen]
        others = [o for o in options if o not in apart]
        said = "; ".join(f"{o}: {why}" for o, why in apart.items() if o in options)
        lines.append(
            f"{group:<{width}}  {chosen}"
            + ("; or " + ", ".join(others) if others else "")
            + (f" ({said})" if said else "")
        )
    return lines


def config_files(file: Path) -> list[Path]:
    """`file` and the config files its defaults list extends (not groups: eval.yaml's `train`);
    none where `file` is not one (a config in a Python package)."""
    if not file.is_file():
        return []
    defaults = OmegaConf.load(file).get("defaults", [])
    extended = [file.parent / f"{d}.yaml" for d in defaults if isinstance(d, str) and d != "_self_"]
    return [file, *(f for e in extended for f in config_files(e))]


def refuse_unread_settings(cfg: DictConfig) -> None:
    """Raise where the command line adds a top-level key that the command has no setting for
    and that the config does not refer to (`${key}`): nothing would read it. Hydra refuses a
    misspelled `draw_tresh=0.5` and advises `+draw_tresh=0.5`, which it then accepts: the run
    would go on with draw_thresh as it was. (A misspelled nested key, `+model.rpn.nms_tresh`,
    fails where its object is built: `refused_keyword`; `+experiment=...` chooses a group.)"""
    hydra = HydraConfig.get()
    added = [o for o in added_settings() if o.key_or_group.isidentifier()]
    if not added:
        return
    texts = [text for c in (cfg, hydra) for _, text in interpolations(plain(c))]
    referred = {word for text in texts for word in re.findall(r"\w+", text)}
    # the config without them: `+input=x` sets a mandatory (???) setting, `++seed=1` an existing one
    base = composed_without(added)
    keys = list(base)  # ??? ones too (`key in base` is False for those)
    for override in added:
        key, value = override.key_or_group, override.input_line.split("=", 1)[1]
        if key in keys or key in referred:
            continue
        near = " or ".join(f"{path}={value}" for path in nearest_settings(key, base))
        advice = f"did you mean {near}? " if near else ""
        raise ValueError(
            f"{override.input_line}: {hydra.job.name}.py has no setting {key}, and nothing "
            f"would read it ({advice}`--help` after the command explains its settings, "
            "`--cfg job` prints them all)"
        )


# Python's TypeError for a keyword that a function or class does not take
UNEXPECTED_KEYWORD = re.compile(
    r"(\w+)(?:\.__init__)?\(\) got an unexpected keyword argument '(\w+)'"
)


def refused_keyword(error: BaseException, checkpoint_data: bool = False) -> str | None:
    """Where the object that a nested setting is passed to refuses it, and the command line
    added that setting (a misspelled `trainer.max_epoch=3` is refused by Hydra, which advises
    `+trainer.max_epoch=3`; then `TypeError: Trainer.__init__() got an unexpected keyword
    argument 'max_epoch'`): the setting, named as typed, and the closest of the settings beside
    it (`trainer.max_epochs=3`); else None. Not for the checkpoint's data settings of eval.py
    and visualize.py (`checkpoint_data`): the config composed here holds other data's."""
    while error is not None and not isinstance(error, TypeError):
        error = error.__cause__
    found = error is not None and UNEXPECTED_KEYWORD.search(str(error))
    if not found:
        return None
    owner, name = found.groups()
    added = added_settings()
    # `trainer.max_epoch=3`, or `trainer.foo.bar=3` (the Trainer refuses foo)
    override = next((o for o in added if name in o.key_or_group.split(".")[1:]), None)
    if override is None:
        return None  # not the command line's: a bug, whose traceback is wanted
    path, value = override.key_or_group, override.input_line.split("=", 1)[1]
    parts = path.split(".")
    parent, rest = ".".join(parts[: parts.index(name, 1)]), parts[parts.index(name, 1) + 1 :]
    if checkpoint_data and parent.startswith("data"):
        advice = "the data settings are the checkpoint's: its run's .hydra/config.yaml lists them"
    elif name == "class_names":  # (the nearest by spelling, num_classes, takes no list)
        advice = (
            "it names the classes itself, from the data: a data.yaml's `names`, a COCO json's "
            "`categories` (without it, the start-up's `Data:` line lists them). "
            "data.class_names is a setting of data=voc and data=hub"
        )
    else:
        beside = OmegaConf.select(composed_without(added), parent)
        keys = list(beside) if isinstance(beside, DictConfig) else []
        near = difflib.get_close_matches(name, keys, n=1)
        advice = f"did you mean {'.'.join([parent, *near, *rest])}={value}? " if near else ""
        advice += "`--cfg job` after the command prints its settings"
    return f"TypeError: {path}={value}: {owner} takes no setting {name} ({advice})"


def added_settings() -> list[Override]:
    """The command line's overrides that add a key (`+key=value`, `++key=value`), Hydra's
    parsed `Override`s; not the choice of a config group (`+experiment=coco400`)."""
    hydra = HydraConfig.get()
    overrides = OverridesParser.create().parse_overrides(list(hydra.overrides.task))
    return [
        o
        for o in overrides
        if (o.is_add() or o.is_force_add()) and o.key_or_group not in hydra.runtime.choices
    ]


def composed_without(added: list[Override]) -> DictConfig:
    """The command's config composed from its command line without the overrides `added`."""
    hydra = HydraConfig.get()
    given = [o.input_line for o in added]
    return compose(hydra.job.config_name, [o for o in hydra.overrides.task if o not in given])


def refuse_missing_settings(cfg: DictConfig) -> None:
    """Raise where a mandatory setting (`???`: predict.py's `input`, export.py's `ckpt_path`,
    `data.root` of data=yolo) is not given, naming it (else OmegaConf's traceback where the
    command reads it)."""
    config = plain(cfg)
    config.pop("hydra", None)  # Hydra's own, where a config composed in Python holds it
    missing = [path for path, value in entries(config) if value == "???"]
    if missing:
        verb, them = ("is", "it") if len(missing) == 1 else ("are", "them")
        raise ValueError(
            f"{', '.join(missing)} {verb} not set: give {them}, "
            + " ".join(f"{path}=..." for path in missing)
            + " (`--help` after the command says what each setting takes)"
        )


def refuse_unread_validation(cfg: DictConfig) -> None:
    """Raise where the command line sets a `data.val.` key and `data.val_fraction` holds out
    the images to validate on: data.val would not be read."""
    share = OmegaConf.select(cfg, "data.val_fraction")
    if share is None:
        return
    given = OverridesParser.create().parse_overrides(HydraConfig.get().overrides.task)
    unread = [o.input_line for o in given if o.key_or_group.startswith("data.val.")]
    if unread:
        raise ValueError(
            f"{unread[0]}: data.val is not read where data.val_fraction={share} holds out "
            "data.train's images to validate on: give one of the two"
        )


def nearest_settings(name: str, cfg: DictConfig, most: int = 3) -> list[str]:
    """The settings of `cfg` (dotted paths, the shortest first) whose own name is the closest to
    `name`: `max_step` -> `trainer.max_steps`, `nms_tresh` -> `model.rpn.nms_thresh`, ..."""
    # a list's items stand for the list: model.anchors.sizes.0 -> model.anchors.sizes
    paths = dict.fromkeys(re.sub(r"(\.\d+)+$", "", path) for path, _ in entries(plain(cfg)))
    names = list(dict.fromkeys(path.rsplit(".", 1)[-1] for path in paths))  # in order, once
    closest = difflib.get_close_matches(name, names, n=1)
    found = [path for path in paths if closest and path.rsplit(".", 1)[-1] == closest[0]]
    return sorted(found, key=lambda path: path.count("."))[:most]


def plain(cfg: DictConfig) -> dict:
    """`cfg` as plain dicts and lists, unresolved (`${...}` and `???` as written)."""
    return OmegaConf.to_container(cfg, resolve=False)
