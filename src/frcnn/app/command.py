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
- the command line's settings (app.settings): `--help`; a setting added with `+` that nothing
  would read, refused; a nested one that its object does not take, or a mandatory one not
  given, named;
- an error this project raised on purpose (a missing file, an offline hub, a value out of
  range, a diverged run) is printed as its message alone, and the command exits with status 1;
  any other error, every error with HYDRA_FULL_ERROR=1, and a failed run of a multirun (which
  the sweep summary records) keep Python's traceback.
"""

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
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from omegaconf import OmegaConf, read_write

import frcnn
from frcnn.app.build import quiet_libraries, require_extra
from frcnn.app.settings import (
    command_help,
    refuse_missing_settings,
    refuse_unread_settings,
    refuse_unread_validation,
    refused_keyword,
)
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
    `mkdir` fails where the folder exists, so two runs or multiruns started in the same second
    (a job array, a shell loop) never share one. A process that an outside launcher started as rank
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
    return Path(str(ckpt_path)).expanduser().absolute().parent.parent  # (checked when read)


def register_resolvers() -> None:
    """The config's own resolvers: `run_dir` (the run folder), `new_folder` (a multirun's),
    `study_seed` (Optuna's) and `command_help` (`--help`)."""
    if not OmegaConf.has_resolver("run_dir"):
        # cached: the folder is made once per run, however often Hydra resolves the key (a
        # multirun's jobs take the cache of its config: one folder for them all)
        OmegaConf.register_new_resolver("run_dir", run_dir, use_cache=True)
        OmegaConf.register_new_resolver("new_folder", new_folder, use_cache=True)
        OmegaConf.register_new_resolver("study_seed", study_seed)
        OmegaConf.register_new_resolver("command_help", command_help)


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
            refuse_unread_validation(cfg)
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
