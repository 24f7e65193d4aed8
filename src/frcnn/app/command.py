"""What every entry point shares around its task: the run folder and how an error is reported.

`command` wraps each entry point's task function (under `@hydra.main`):

- the run folder: a training run resumed from `<run>/checkpoints/<name>.ckpt` goes on in `<run>`
  (Lightning's checkpoint callbacks then restore their best-so-far, TensorBoard's curves and the
  log continue), a SLURM job's in a folder named after it; every other run gets a new folder
  (the `run_dir` resolver of conf/hydra/default.yaml, registered when an entry point is
  defined);
- `data.` settings of the commands that take them from a checkpoint (see `command`);
- a run of a multirun: the command line and run folder Lightning gives a DDP run's other
  processes are this run's own (`as_single_run`), and the next run starts with the process
  group and environment this one found, and without the objects this one made;
- `--help`: the entry point's docstring, its config file as written (each setting with its
  comment) and the options of each config group it chooses from (`command_help`);
- a top-level setting that the command line adds (`+key=value`, as Hydra's error for a
  misspelled setting advises) and that nothing would read: refused, naming the nearest
  setting (`refuse_unread_settings`); a nested one that its object does not take: named, with
  the nearest setting beside it (`refused_keyword`); a mandatory one (`???`) not given: named;
- an error this project raised on purpose (a missing file, an offline hub, a value out of
  range, a diverged run) is printed as its message alone, and the command exits with status 1;
  any other error, every error with HYDRA_FULL_ERROR=1, and a failed run of a multirun (which
  the sweep summary records) keep Python's traceback.
"""

import difflib
import functools
import gc
import itertools
import linecache
import logging
import os
import re
import sys
from pathlib import Path

import torch.distributed as dist
from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.types import RunMode
from lightning.pytorch.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import DictConfig, OmegaConf, read_write

import frcnn
from frcnn.app.build import quiet_libraries, require_extra
from frcnn.training.checkpoint import entries, interpolations
from frcnn.training.sweep import study_seed

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(frcnn.__file__).parent


def run_dir(new: str, task_name: str, ckpt_path: str | None) -> str:
    """Hydra's run folder: a new one (`new`, `.../runs/<time>`, created here: `new_folder`), or
    for a training run

    - resumed from `ckpt_path`, a checkpoint in `<run>/checkpoints/`: that `<run>`;
    - in a SLURM job: `.../runs/slurm-<job id>[.<step id>]`, the same for every task of the job
      (the processes of a multi-node run, started seconds apart) and after SLURM requeues it
      (the run then goes on from the checkpoint it finds there: app.train);
    - under torchrun with a `--rdzv-id`: `.../runs/torchrun-<id>`, the same on every node."""
    if task_name != "train":
        return new_folder(new)
    if ckpt_path and (run_of(ckpt_path) / ".hydra" / "config.yaml").is_file():
        return str(run_of(ckpt_path))
    if ckpt_path:
        return new_folder(new)
    job = os.environ.get("SLURM_JOB_ID")
    if job and SLURMEnvironment.detect():  # not an interactive shell
        step = os.environ.get("SLURM_STEP_ID")
        name = f"slurm-{job}" + (f".{step}" if step and step.isdigit() else "")
        return str(Path(new).parent / name)
    torchrun = os.environ.get("TORCHELASTIC_RUN_ID", "none")  # torchrun's --rdzv-id
    if torchrun != "none" and TorchElasticEnvironment.detect():
        return str(Path(new).parent / f"torchrun-{torchrun}")
    return new_folder(new)


def new_folder(path: str) -> str:
    """`path`, or else `path_1`, `path_2`, ...: the first that did not exist, created now.
    `mkdir` fails where the folder exists, so two runs started in the same second (a job
    array, a shell loop) never share one. A process that an outside launcher started as rank
    > 0 of a run (each rank resolves its folder) takes `path` as it is: rank 0 creates it."""
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) > 0:
        return path
    for number in itertools.count():
        candidate = f"{path}_{number}" if number else path
        try:
            Path(candidate).mkdir(parents=True)
        except FileExistsError:
            continue
        return candidate


def run_of(ckpt_path: str) -> Path:
    """The run folder a checkpoint in `<run>/checkpoints/` belongs to."""
    return Path(ckpt_path).expanduser().absolute().parent.parent


def register_resolvers() -> None:
    """The config's own resolvers: `run_dir` (the run folder), `study_seed` (Optuna's) and
    `command_help` (`--help`)."""
    if not OmegaConf.has_resolver("run_dir"):
        # cached: the folder is made once per run, however often Hydra resolves the key
        OmegaConf.register_new_resolver("run_dir", run_dir, use_cache=True)
        OmegaConf.register_new_resolver("study_seed", study_seed)
        OmegaConf.register_new_resolver("command_help", command_help)


def command_help() -> str:
    """What `--help` prints (conf/hydra/default.yaml's help template; Hydra's default page lists
    every group of the tree and the settings without their comments): the entry point's
    docstring (what it does, how it is run), its config file as written, each setting with its
    comment (and the file it extends: eval.yaml train.yaml's), and the options of each config
    group the command chooses from."""
    hydra = HydraConfig.get()
    folder = next(s.path for s in hydra.runtime.config_sources if s.provider == "main")
    files = config_files(Path(folder) / f"{hydra.job.config_name}.yaml")
    shown = [str(f.relative_to(Path.cwd()) if f.is_relative_to(Path.cwd()) else f) for f in files]
    sections = [(sys.modules["__main__"].__doc__ or "").strip()]
    for file, name in zip(files, shown, strict=True):
        if file == files[0]:
            sections.append(f"== Settings (key=value; nested: a.b=value): {name} ==")
        else:
            sections.append(f"== {name}, which it extends ==")
        sections.append(file.read_text().strip())
    sections += [
        "== Config groups (group=option): the chosen one; the others ==",
        "\n".join(group_options(hydra.runtime.choices)),
        "`--cfg job` after the command prints every setting as composed, the groups' too.\n"
        "Powered by Hydra (https://hydra.cc); --hydra-help shows Hydra's own flags.",
    ]
    return "\n\n".join(sections).replace("$", "$$")  # the template's placeholders are not used


def group_options(choices: DictConfig) -> list[str]:
    """A line per config group of `choices` (Hydra's {group: option chosen}), Hydra's own left
    out: `device  auto; or cpu, ddp, gpu`."""
    loader = GlobalHydra.instance().config_loader()
    groups = sorted(g for g in choices if g != "hydra" and not g.startswith("hydra/"))
    width = max(map(len, groups), default=0)
    lines = []
    for group in groups:
        chosen = choices[group] or "none"
        others = [o for o in loader.get_group_options(group) if o != chosen]
        lines.append(
            f"{group:<{width}}  {chosen}" + ("; or " + ", ".join(others) if others else "")
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


def command(task_function=None, *, checkpoint_data: bool = False):
    """Decorator of an entry point's task function (see the module's docstring).

    `checkpoint_data` (eval.py, visualize.py): the data settings are the checkpoint's, which
    Hydra cannot see when it composes the config; a `data.<key>=value` of the command line (a
    key of the checkpoint's data, e.g. `data.val.limit` of the hub source) reaches Hydra as
    `++data.<key>=value`, so that it is not refused for missing from the default data config.
    """
    if task_function is None:
        return functools.partial(command, checkpoint_data=checkpoint_data)
    register_resolvers()
    quiet_libraries()  # before Hydra's sweeper builds Optuna's sampler
    require_optuna_sweeper(sys.argv[1:])
    if checkpoint_data:
        sys.argv[1:] = [re.sub(r"^data\.", "++data.", arg) for arg in sys.argv[1:]]

    @functools.wraps(task_function)
    def run(cfg):
        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
        argv, environ = sys.argv, dict(os.environ)
        try:
            if multirun:
                as_single_run()
            refuse_unread_settings(cfg)
            refuse_missing_settings(cfg)
            return task_function(cfg)
        except Exception as error:
            if multirun or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            reason = deliberate(error) or refused_keyword(error, checkpoint_data)
            if reason is None:
                raise
            log.error("%s: %s\n(HYDRA_FULL_ERROR=1 shows the traceback)", cfg.task_name, reason)
            sys.exit(1)
        finally:
            if multirun:  # the next run starts as this one did
                sys.argv = argv
                if dist.is_available() and dist.is_initialized():
                    dist.destroy_process_group()
                # Lightning's DDP launcher sets LOCAL_RANK, MASTER_PORT, ... in this process
                os.environ.clear()
                os.environ.update(environ)
                # the run's trainer, module and data hold one another (reference cycles), which
                # only the cyclic collector frees, and seldom: by then they are old objects. A
                # sweep of 20 runs of the tests' tiny detector grew from 0.9 GB to 1.9 GB
                gc.collect()

    return run


# command-line choices of Optuna's search (hparams_search=nms_iou_optuna): the `sweep` extra
OPTUNA_CHOICE = re.compile(r"^\W*(hparams_search=\S*optuna|hydra/sweeper=optuna)")


def require_optuna_sweeper(args: list[str]) -> None:
    """Where the command line chooses Optuna's search, stop at once if hydra-optuna-sweeper is
    not installed, naming the extra (Hydra would say only that it cannot find
    hydra/sweeper/optuna)."""
    chosen = next((arg for arg in args if OPTUNA_CHOICE.match(arg)), None)
    if chosen is None:
        return
    try:
        require_extra(chosen, ("optuna", "hydra_plugins.hydra_optuna_sweeper"), "sweep")
    except ModuleNotFoundError as err:
        sys.exit(f"ModuleNotFoundError: {err}")


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
            f"would read it ({advice}`--cfg job` after the command prints its settings)"
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


def as_single_run() -> None:
    """One run of a multirun, as the command line and run folder that Lightning gives the other
    processes of a DDP run (it starts them with this process's `sys.argv` and
    `hydra.run.dir`): this run's own overrides in RUN mode, in this run's folder. (Else each
    would start the whole sweep again, in new folders.)"""
    hydra = HydraConfig.get()
    config_flags = []
    for flag, value in zip(sys.argv, sys.argv[1:], strict=False):
        if flag in ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir"):
            config_flags += [flag, value]
    sys.argv = [sys.argv[0], *config_flags, *hydra.overrides.task, "hydra.mode=RUN"]
    with read_write(hydra.run):
        hydra.run.dir = hydra.runtime.output_dir


def deliberate(error: BaseException) -> str | None:
    """The message of an error this project raised on purpose, found in `error` or what it
    wraps (Hydra wraps a constructor's error in an InstantiationException); None for anything
    else (a bug: its traceback is wanted)."""
    while error is not None:
        if not isinstance(error, AssertionError) and raised_here(error):
            return f"{type(error).__name__}: {error}"
        error = error.__cause__
    return None


def raised_here(error: BaseException) -> bool:
    """Whether `error` comes from a `raise` statement of this package's code (not from a
    failing operation, e.g. a tensor op called there)."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    line = linecache.getline(filename, tb.tb_lineno).strip()
    return Path(filename).is_relative_to(PACKAGE_DIR) and line.startswith("raise ")
