"""Building a run from its Hydra config: data module, detector, LightningModule and Trainer,
shared by every command."""

import difflib
import importlib
import inspect
import logging
import os
import subprocess
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator
from lightning.pytorch.callbacks import ProgressBar as LightningBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from frcnn.checks import (
    check_flag,
    check_gpu,
    check_number,
    check_path,
    is_number,
    typed_setting,
)
from frcnn.data.datamodule import StreamEpoch
from frcnn.data.sources import relative_path
from frcnn.inference.predictor import resolve_device
from frcnn.model.backbone import STAGES
from frcnn.model.convert import PREDICTOR_KEYS, Loaded, load_weights
from frcnn.training.callbacks import Preemption, ProgressBar
from frcnn.training.checkpoint import (
    DATA_TARGETS,
    AtomicCheckpointIO,
    InitialWeights,
    build_detector,
    initial_weights,
    refuse_code,
)
from frcnn.training.sweep import improves

log = logging.getLogger(__name__)


def quiet_libraries() -> None:
    """faster-coco-eval prints its whole summary table at INFO level on every validation: the
    commands keep it to warnings. Under DDP, Lightning advises `sync_dist=True` for every
    figure logged per epoch (19 warnings): DetectorModule gathers the validation figures itself,
    the same on every process, and the training losses' epoch means are the first process's
    (syncing them would reduce at every step). Lightning's advertisement of its cloud logger,
    torch's deprecation of a class Lightning uses, Lightning's model summary that counts
    bf16-mixed weights as float32 ones, and the deprecations in what hydra-optuna-sweeper 1.3
    passes to Optuna (its search space's classes, TPE's arguments: kept until Optuna 6) are
    nothing a user can act on. (Set when an entry point is defined, before Hydra's sweeper
    builds its sampler, and when a run is built: not at import.)"""
    logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(no_tips)  # once
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", r"Precision bf16-mixed is not supported by the model summ")
    warnings.filterwarnings("ignore", r".*Distribution has been deprecated", FutureWarning)
    for tpe_argument in ("consider_prior", "prior_weight", "consider_magic_clip",
                         "consider_endpoints", "warn_independent_sampling"):  # fmt: skip
        warnings.filterwarnings("ignore", f"`{tpe_argument}` has been deprecated", FutureWarning)
    # a run that ends or checkpoints before its first validation: the run says so itself
    # (app.train); Lightning raises, rather than warns, where a validation ran without it
    warnings.filterwarnings("ignore", r"`ModelCheckpoint\(monitor='val/\S+'\)` could not find")
    warnings.filterwarnings("ignore", r"It is recommended to use `self.log\('(val|train)/")
    # a run resumed mid-epoch says itself what becomes of the epoch (data.datamodule.StreamEpoch)
    warnings.filterwarnings("ignore", "You're resuming from a checkpoint that ended before")
    # an epoch shorter than the interval still logs (the count runs on over epochs); a run
    # shorter than it is given a shorter one (training.module.fit_logging_interval)
    warnings.filterwarnings("ignore", r"The number of training batches \(\d+\) is smaller than")
    # more DataLoader workers than cores: the data module says so once (warn_workers_past_cores)
    warnings.filterwarnings("ignore", r"This DataLoader will create \d+ worker processes in total")


# how pip installs an extra where `pip install -e '.[<extra>]'` cannot: hydra-optuna-sweeper
# declares optuna<3 (pyproject.toml's [tool.uv] overrides it for uv; pip has no overrides)
PIP_INSTALL = {
    "sweep": "`pip install 'optuna>=4,<5'` then `pip install --no-deps 'hydra-optuna-sweeper>=1.3'`"
}


def require_extra(what: str, modules: Sequence[str], extra: str) -> None:
    """The packages of an extra of pyproject.toml (`export`, `video`, `sweep`: training needs
    none of them) that `what` needs: a missing one stops the command naming the extra and how
    to install it, rather than failing at its first import."""
    try:
        for module in modules:
            importlib.import_module(module)
    except ImportError as err:
        pip = PIP_INSTALL.get(extra, f"`pip install -e '.[{extra}]'`")
        raise ModuleNotFoundError(
            f"{what} needs {' and '.join(modules)} ({err}): the `{extra}` extra. In a checkout: "
            f"`uv sync --extra {extra}` (`uv run` installs it with the dev tools) or {pip}"
        ) from None


def no_tips(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip")


def build(cfg: DictConfig, datamodule=None, resumed: dict | None = None):
    """-> (datamodule, module, trainer), all from the config (the data module from `cfg.data`
    unless one is given); `resumed`: the checkpoint the run goes on from (`cfg.ckpt_path`)."""
    quiet_libraries()
    check_gpu("device", cfg.trainer.accelerator)  # (experiment=coco400 chooses device=gpu)
    check_trainer(cfg.trainer)
    check_seed(cfg.seed)
    L.seed_everything(cfg.seed, workers=True)
    if datamodule is None:
        datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # fail now, not after the model is built, if the data is not there
    classes_from_data(cfg, datamodule)
    if cfg.model.num_classes != datamodule.num_classes:
        raise ValueError(
            f"model.num_classes={cfg.model.num_classes}, but the data has "
            f"{datamodule.num_classes} classes: leave model.num_classes to follow "
            "data.num_classes (its default)"
        )
    start = None
    if resumed is not None:
        resume_backbone(cfg, resumed)
    elif cfg.get("init_weights"):
        start = initial_weights(cfg.init_weights)
        fit_backbone(cfg, start)
    else:
        warn_frozen_random(cfg.model.backbone)
    model = build_detector(OmegaConf.to_container(cfg.model, resolve=True), source="")
    if start:
        loaded = load_weights(model, start.state, start.source_names, datamodule.class_names)
        check_fit(cfg, start, loaded)
        log_initial_weights(cfg.init_weights, start, loaded)
    trainer = build_trainer(cfg, [instantiate(cfg.ema)] if cfg.get("ema") else [])
    scale_learning_rate(cfg, trainer)
    module = instantiate(cfg.module)(
        model=model, class_names=datamodule.class_names, category_ids=datamodule.category_ids
    )
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    check_monitored(cfg, module.metric_names())
    return datamodule, module, trainer


def check_seed(seed) -> None:
    """The run's `seed`, in NumPy's range as Lightning wants it (it put 0 in place of one
    outside, warning; a data stream shuffled with it failed with a traceback)."""
    check_number("seed", seed, 0, 2**32 - 1, integer=True)


def check_monitored(cfg: DictConfig, logged: set[str]) -> None:
    """Raise ValueError where a callback monitors (or a sweeper optimises) a metric that the
    run does not log: Lightning fails at the first validation, a finished epoch unsaved, or a
    sweeper is told None. LearningRateMonitor's `lr-...` figures are let be. A loss or a COCO
    figure sought the wrong way (a callback's `mode`, Lightning's default "min"; an Optuna
    search's `direction`) is refused too: the best checkpoint would be the worst."""
    entries = {
        name: entry
        for name, entry in (cfg.get("callbacks") or {}).items()
        if isinstance(entry, DictConfig) and "_target_" in entry and entry.get("monitor")
    }
    monitored = {f"callbacks.{name}.monitor": entry.monitor for name, entry in entries.items()}
    monitored["optimized_metric"] = cfg.get("optimized_metric")
    for key, metric in monitored.items():
        if metric is None or metric in logged or str(metric).startswith("lr-"):
            continue
        near = difflib.get_close_matches(str(metric), logged, n=1)
        shown = sorted(n for n in logged if not n.endswith(("_step", "_epoch")))
        raise ValueError(
            f"{key}={metric}: the run logs no such metric"
            + (f" (did you mean {near[0]}?)" if near else "")
            + f"; it logs {', '.join(shown)} (training figures also as _step and _epoch)"
        )
    sought = {
        f"callbacks.{name}.mode": (entry.monitor, entry.get("mode", default_mode(entry)))
        for name, entry in entries.items()
    }
    sweeper = HydraConfig.get().sweeper if HydraConfig.initialized() else {}
    if cfg.get("optimized_metric") and isinstance(sweeper.get("direction"), str):
        sought["hydra.sweeper.direction"] = (cfg.optimized_metric, sweeper.direction)
    for key, (metric, way) in sought.items():
        better = improves(metric)  # "min" | "max" | None (neither: a count)
        if better and way and not str(way).startswith(better):  # (way None: no mode taken)
            right = better if key.endswith(".mode") else f"{better}imize"
            highest = "highest" if str(way).startswith("max") else "lowest"
            raise ValueError(f"{key}={way} seeks the {highest} {metric}, the worst: {key}={right}")


def default_mode(entry: DictConfig) -> str | None:
    """The `mode` a callback class takes when its config gives none (Lightning's "min")."""
    try:
        mode = inspect.signature(hydra.utils.get_class(entry._target_)).parameters.get("mode")
    except (ImportError, ValueError, TypeError):  # (its instantiation names the problem)
        return None
    return mode.default if mode is not None and isinstance(mode.default, str) else None


def classes_from_data(cfg: DictConfig, datamodule) -> None:
    """`data.num_classes: null` (the data configs whose files name their classes): the data's
    own count, for the model (`model.num_classes` follows it) and the saved config."""
    if cfg.data.get("num_classes") is None:
        cfg.data.num_classes = datamodule.num_classes


@rank_zero_only  # start-up lines once, not once per DDP process (each builds the run)
def warn_frozen_random(backbone: DictConfig) -> None:
    """Frozen stages that hold random weights (no pretrained backbone, no init_weights) never
    learn: a run that freezes them is warned (e.g. coco400 offline, `weights=null`)."""
    frozen = backbone.get("frozen")
    if frozen in STAGES and not backbone.get("weights"):  # (another setting fails on its own)
        log.warning(
            "model.backbone.frozen=%s keeps the backbone's stages up to %s as they are, and "
            "they are random (model.backbone.weights=null, no init_weights): they will never "
            "learn. Give pretrained weights, or train every stage (frozen=none)",
            frozen, frozen,
        )  # fmt: skip


def fit_backbone(cfg: DictConfig, start: InitialWeights) -> None:
    """The backbone settings that `init_weights` needs: no ImageNet download that they would
    overwrite, and the FrozenBatchNorm epsilon they were trained with (torchvision's COCO
    weights: 0; kept in the saved config, so eval and predict rebuild it the same way).
    Trainable BatchNorm keeps its own (0 is not allowed in training)."""
    backbone = cfg.model.backbone
    backbone.weights = None
    if backbone.get("norm") == "frozen_bn" and start.norm_eps is not None:
        backbone.norm_eps = start.norm_eps


def resume_backbone(cfg: DictConfig, checkpoint: dict) -> None:
    """A run that goes on from `checkpoint` with `init_weights` (the command that started it,
    given again): the checkpoint's weights replace those, so they are not read (a file since
    moved or deleted, torchvision's COCO weights on an offline node), and the backbone settings
    they gave the run (`fit_backbone`) are taken from the checkpoint's config."""
    if not cfg.get("init_weights"):
        return
    saved = checkpoint["config"]["model"].get("backbone") or {}
    for key in ("weights", "norm_eps"):
        if key in saved:
            cfg.model.backbone[key] = saved[key]
    log.info(
        "init_weights=%s not read: the run goes on from ckpt_path, whose weights replace them",
        cfg.init_weights,
    )


# model settings that may differ from those the initial weights were trained with: the
# classes, how the backbone starts and trains, and the epsilon that fit_backbone sets
FREE_SETTINGS = (
    "num_classes",
    "backbone.weights",
    "backbone.frozen",
    "backbone.checkpointing",
    "backbone.norm_eps",
)
# settings that give the box regressors their meaning, not their shapes
REGRESSION_SETTINGS = ("anchors.", "rpn.box_coder_weights", "roi_heads.box_coder_weights")


def check_fit(cfg: DictConfig, start: InitialWeights, loaded: Loaded) -> None:
    """Initial weights start a run only where every tensor of theirs fits the run's detector
    (the predictor's aside: carried over class by class): one that does not means other model
    settings, and that part of the detector would start random. Refused, naming the settings
    they were trained with; for a checkpoint of this project, a warning where its anchors or
    box codings differ (the tensors fit, but the regressors were trained for others)."""
    if start.model is None:
        differ = []
        settings = (
            "model=resnet50_fpn anchors=fpn (torchvision's fasterrcnn_resnet50_fpn, as "
            "experiment=finetune builds it)"
        )
    else:
        differ = differing_settings(start.model, OmegaConf.to_container(cfg.model, resolve=True))
        settings = (
            f"{' '.join(differ)} (its run's .hydra/overrides.yaml lists the settings it was given)"
        )
    unfit = [
        name
        for name in loaded.left_out
        if not name.startswith(PREDICTOR_KEYS) and not name.endswith("num_batches_tracked")
    ]
    if unfit:
        raise ValueError(
            f"init_weights={cfg.init_weights!r} was trained with other model settings than "
            f"this run's: this detector's {listed(unfit, 4)} do not fit its tensors and would "
            f"start as initialised. Give its settings: {settings}"
        )
    regression = [s for s in differ if s.removeprefix("model.").startswith(REGRESSION_SETTINGS)]
    if regression and rank_zero_only.rank == 0:
        log.warning(
            "init_weights=%s was trained with %s; this run's differ, so its box regressors "
            "start trained for other anchors or codings (they relearn)",
            cfg.init_weights, " ".join(regression),
        )  # fmt: skip


def differing_settings(trained: dict, run: dict) -> list[str]:
    """The `model.` overrides that give `run` (a model config) the values of `trained` where
    they differ (FREE_SETTINGS aside), e.g. `model.fpn_channels=32`."""
    return [
        typed_setting(f"model.{key}", old)
        for key, old, new in config_differences(trained, run)
        if None not in (old, new) and not key.startswith(("_", *FREE_SETTINGS))
    ]


def config_differences(a, b, prefix: str = ""):
    """(dotted key, value in a, value in b) for every leaf where two nested dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            yield from config_differences(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip("."), a, b


@rank_zero_only
def log_initial_weights(source: str, start: InitialWeights, loaded: Loaded) -> None:
    """Start-up lines: what `init_weights` loaded, carried over by class name, left out."""
    if start.source_names is None:
        rows = "the file names no classes: its predictor is loaded only where its shape fits"
    else:
        rows = (
            f"predictor rows carried over by class name: {listed(['background', *loaded.carried])}"
            f"; new classes (rows as initialised): {listed(loaded.new)}"
        )
    log.info(
        "init_weights=%s: %s. Loaded %d tensors; %s; tensors left as initialised: %s",
        source,
        start.what,
        len(loaded.loaded),
        rows,
        listed(loaded.left_out),
    )


def listed(names: list[str], most: int = 12) -> str:
    """Names for a log line: the first `most`, and how many in all beyond that (COCO's 80
    classes made a line of 1,700 characters)."""
    if not names:
        return "none"
    shown = ", ".join(names[:most])
    return shown if len(names) <= most else f"{shown}, ... ({len(names)} in all)"


# the Trainer's counts and their least values: Lightning does not check their types (a string
# fails deep in it: "'>' not supported between instances of 'int' and 'str'")
TRAINER_COUNTS = {"max_epochs": -1, "max_steps": -1, "check_val_every_n_epoch": 1,
                  "log_every_n_steps": 1}  # fmt: skip
# Lightning's switches, with the other values each takes: it takes any value, and a word that
# Hydra reads as a string (`trainer.deterministic=no`) as true
TRAINER_FLAGS = {"enable_checkpointing": (None,), "enable_progress_bar": (None,),
                 "enable_model_summary": (None,), "deterministic": (None, "warn"),
                 "benchmark": (None,), "inference_mode": (), "use_distributed_sampler": (),
                 "detect_anomaly": (), "barebones": (), "sync_batchnorm": ()}  # fmt: skip


def check_trainer(trainer: DictConfig) -> None:
    """The Trainer's counts (`TRAINER_COUNTS`; null: Lightning's default), gradient clip and
    switches (`TRAINER_FLAGS`), checked before the data and the model are built, named."""
    for key, low in TRAINER_COUNTS.items():
        if trainer.get(key) is not None:
            check_number(f"trainer.{key}", trainer[key], low, integer=True)
    if trainer.get("gradient_clip_val") is not None:
        check_number("trainer.gradient_clip_val", trainer.gradient_clip_val, 0)
    for key, others in TRAINER_FLAGS.items():
        if key in trainer:
            check_flag(f"trainer.{key}", trainer[key], *others)
    every = trainer.get("val_check_interval")  # (also a time, "00:12:00:00": Lightning's)
    if is_number(every) and (every < 1 if isinstance(every, int) else not 0 < every <= 1):
        # 0 failed at the first step with a ZeroDivisionError deep in Lightning
        raise ValueError(
            f"trainer.val_check_interval={every!r}: validate every N steps (an integer >= 1) "
            "or N times an epoch (1/N, a number in (0, 1]); null: at each epoch's end"
        )


def scale_learning_rate(cfg: DictConfig, trainer: L.Trainer) -> None:
    """The linear scaling rule of torchvision's and MMDetection's recipes: `module.optimizer.lr`
    is the LR for a total batch of `lr_base_batch` images (16); the run's LR is scaled by its
    own total batch (per device x devices x accumulated batches). lr_base_batch=null: as given.
    An LR of 0 or less is refused, naming the key (at 0 a run learns nothing: `-m
    module.optimizer.lr=0,02` sweeps 0 and 2)."""
    if "lr" in cfg.module.optimizer:  # (torch would name it scaled, and not its key)
        check_number("module.optimizer.lr", cfg.module.optimizer.lr, 0, open_low=True)
    base = cfg.get("lr_base_batch")
    if base is None:
        return
    check_number("lr_base_batch", base, 1, integer=True)
    batch = cfg.data.batch_size * trainer.world_size * trainer.accumulate_grad_batches
    base_lr = cfg.module.optimizer.lr
    cfg.module.optimizer.lr = base_lr * batch / base
    if not trainer.is_global_zero:
        return
    log.info(
        "Learning rate %g = %g x batch %d / %d (module.optimizer.lr is the LR for a batch of "
        "lr_base_batch images; lr_base_batch=null uses it as it is)",
        cfg.module.optimizer.lr,
        base_lr,
        batch,
        base,
    )


MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's


def build_trainer(cfg: DictConfig, training_callbacks: list | None = None) -> L.Trainer:
    """The Lightning Trainer with the config's callbacks and loggers (and `StreamEpoch`,
    which streamed data needs, `Preemption` and the progress bar, whatever the callbacks config
    says), and `training_callbacks` (train.py's: the weight EMA)."""
    callbacks = with_progress_bar([instantiate(c) for c in selected(cfg, "callbacks")], cfg)
    callbacks += [StreamEpoch(), Preemption(), *(training_callbacks or [])]
    check_loggers(cfg.get("logger"))
    loggers = [instantiate(c) for c in selected(cfg, "logger")]
    trainer = instantiate(
        cfg.trainer,
        accelerator=accelerator(cfg.trainer.accelerator),
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
    )
    report_wanted(cfg)  # a wrong setting fails now, not at the end of the run
    matmul = cfg.get("float32_matmul_precision", "high")
    if matmul not in MATMUL_PRECISIONS:  # (checked on a CPU too: the run may move to a GPU)
        raise ValueError(
            f"float32_matmul_precision={matmul!r}: one of {', '.join(MATMUL_PRECISIONS)}"
        )
    if isinstance(trainer.accelerator, CUDAAccelerator):
        torch.set_float32_matmul_precision(matmul)
    elif trainer.precision == "bf16-mixed":
        warn_slow_bfloat16()
    return trainer


# (Lightning runs precision=16-mixed as bf16-mixed on a CPU, saying so)
SLOW_BFLOAT16 = (
    "precision=bf16-mixed on a CPU without bfloat16 instructions (AVX-512 BF16, AMX, Arm's "
    "BF16): PyTorch computes its bfloat16 convolutions and matrix products here in a slow "
    "fallback, and the run is many times slower than with precision=32-true"
)


@rank_zero_only  # once, not once per DDP process
def warn_slow_bfloat16() -> None:
    if not cpu_has_bfloat16():
        log.warning(SLOW_BFLOAT16)


def cpu_has_bfloat16() -> bool:
    """Whether this CPU runs bfloat16 products in oneDNN's kernels (torch's own test of it).
    Without (an AVX2 CPU), PyTorch's fallback took 12 s for a 256 x 12544 x 1024 product that
    float32 does in 0.05 s, and 38 s for a train step of a ResNet-18-FPN detector at 64 px
    that takes 2 s in float32 (bench/gpu.py's dry run)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private op: a torch without it gets no warning
        return True


def with_progress_bar(callbacks: list, cfg: DictConfig) -> list:
    """`callbacks` with the project's progress bar where the callbacks choice has none
    (`callbacks=none`, `debug=fdr`: Lightning would add its own, which shows each figure
    twice), and without a bar at `trainer.enable_progress_bar=false` (Lightning refuses a bar
    callback then)."""
    if not cfg.trainer.get("enable_progress_bar", True):
        return [c for c in callbacks if not isinstance(c, LightningBar)]
    if any(isinstance(c, LightningBar) for c in callbacks):
        return callbacks
    return [*callbacks, ProgressBar()]


def accelerator(name: str) -> str:
    """Lightning's accelerator for the config's: `auto` is the Predictor's `device=auto`, a CUDA
    GPU where torch finds one, else the CPU. (Lightning's own `auto` takes Apple's MPS first,
    which has no float64, which the NMS's row shift needs: `boxes.nms_rows`.)"""
    if name != "auto":
        return name
    chosen = resolve_device("auto").type  # "cuda" or "cpu", both Lightning's names too
    if chosen == "cpu" and MPSAccelerator.is_available():  # Lightning: "GPU available but not used"
        log.info("device=auto: Apple's MPS is not used (it has no float64): the CPU runs")
    return chosen


def wait_for_other_processes(trainer: L.Trainer, timeout_s: float = 120) -> None:
    """Wait until the DDP processes that Lightning started from this one (the other GPUs of
    this machine) have exited. Lightning does not: in a sweep the next run would start its
    processes while the last run's were still shutting down. One that has not exited after
    `timeout_s` is killed, named in the log."""
    launcher = getattr(trainer.strategy, "launcher", None)
    for process in getattr(launcher, "procs", None) or []:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning(
                "DDP process %d still running %g s after the run: killed", process.pid, timeout_s
            )
            process.kill()
            process.wait()  # reaped: no zombie outlives the command


@contextmanager
def stops_other_processes_on_error(trainer: L.Trainer, grace_s: float = 5.0):
    """A run that fails in this process stops the DDP processes that Lightning started from it,
    which would otherwise wait for it at a collective for half an hour (those still running
    `grace_s` seconds later are killed); a `MASTER_PORT` that another program holds is named,
    and the others are killed at once (the store they would join never started).
    (A SIGTERM or Ctrl-C stop is not a failure: the caller summarises it.)"""
    try:
        yield
    except SIGTERMException:
        raise
    except BaseException as error:
        taken = "EADDRINUSE" in str(error)
        wait_for_other_processes(trainer, 0 if taken else grace_s)
        if taken:
            port = os.environ.get("MASTER_PORT")
            raise OSError(
                f"MASTER_PORT={port}: the port is taken (another run or program listens on it): "
                "set MASTER_PORT to a free port, or leave it unset for Lightning to choose one"
            ) from error
        raise


def report_wanted(cfg: DictConfig) -> bool:
    """Whether the run writes report/: `report=true`, or `auto` (the default) and the run is no
    trial of a sweep (whose summary compares the trials; each report would cost about as much
    as its COCO evaluation). Raises on other settings."""
    setting = cfg.get("report", "auto")
    check_flag("report", setting, "auto")
    check_number("report_score_threshold", cfg.get("report_score_threshold", 0.5), 0, 1)
    if setting == "auto":
        return HydraConfig.get().mode != RunMode.MULTIRUN
    return setting


def check_loggers(loggers: DictConfig | None) -> None:
    """Lightning's loggers take any value: their folders must be paths (`logger.csv.name=5`
    failed in os.path.join with a traceback) and their switches true or false
    (`default_hp_metric=no` ran as true)."""
    for name, entry in (loggers or {}).items():
        if not isinstance(entry, DictConfig):
            continue
        for key in ("save_dir", "name"):
            if entry.get(key) is not None:
                check_path(f"logger.{name}.{key}", entry[key])
        for key in ("default_hp_metric", "log_graph"):
            if key in entry:
                check_flag(f"logger.{name}.{key}", entry[key])


def selected(cfg: DictConfig, group: str) -> list[DictConfig]:
    """The entries of a callbacks / logger group that are objects to build (`_target_`).

    An experiment may set a value of a callback (coco400: `callbacks.last_checkpoint.
    every_n_train_steps`) that another choice (`debug=fdr`, `callbacks=none`) leaves out: that
    value alone is no callback, and is passed over."""
    entries = []
    for name, entry in (cfg.get(group) or {}).items():
        if isinstance(entry, DictConfig) and "_target_" in entry:
            entries.append(entry)
        else:
            log.debug("%s.%s has no _target_ (not in this %s choice): left out", group, name, group)
    return entries


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def final_metrics(trainer: L.Trainer) -> dict[str, float | int]:
    """The last logged value of every validation and epoch-level training metric; a count
    (`val/images`: Lightning logs floats) as an int, in the summary, metrics.json and the
    sweep tables."""
    metrics = {}
    for name, value in sorted(trainer.callback_metrics.items()):
        if name.startswith(("val/", "train/")) and not name.endswith("_step"):
            value = float(value)
            metrics[name.removesuffix("_epoch")] = round(value) if name == "val/images" else value
    return metrics


def shown(path) -> str:
    """A path as a user would type it: relative to the working directory when inside it."""
    return relative_path(path, Path.cwd())


def given_keys(overrides: list[str]) -> set[str]:
    """The keys (or groups) that command-line `overrides` set, whatever their prefix (+, ++)."""
    return {o.key_or_group for o in OverridesParser.create().parse_overrides(overrides)}


def checkpoint_run_config(cfg: DictConfig, saved: dict, overrides: list[str]) -> DictConfig:
    """`cfg` with `data` and `model` replaced by the checkpoint's own `saved` settings, except
    what the command line (`overrides`) sets under `data.` / `model.` or as `data=<option>`
    (a `data.val.` key of the command line's, where the run held out its validation images:
    data.val validates).

    The saved data config may name only this project's data module and sources as `_target_`
    (a checkpoint is data, never code), unless the command line sets that key; the model's is
    checked where the detector is built (`build_detector`)."""
    given = OverridesParser.create().parse_overrides(overrides)
    keys = [override.key_or_group for override in given]
    if any(o.key_or_group == "data" and not o.is_delete() for o in given):
        data = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))  # the command's
    else:
        refuse_code(saved["data"], "data", DATA_TARGETS, trusted=keys)
        data = OmegaConf.create(saved["data"])
    model = OmegaConf.create(saved["model"])
    for override in given:
        key = override.key_or_group
        root, _, rest = key.partition(".")
        if root in ("data", "model") and rest:
            value = OmegaConf.select(cfg, key)
            if isinstance(value, DictConfig | ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
            OmegaConf.update(data if root == "data" else model, rest, value, force_add=True)
    if data.get("val_fraction") is not None and any(k.startswith("data.val.") for k in keys):
        # (data.val_fraction given too is refused: app.settings.refuse_unread_validation)
        log.info(
            "data.val of the command line validates, not the training run's held-out share "
            "(its data.val_fraction=%s)", data.val_fraction,
        )  # fmt: skip
        data.val_fraction = None
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.data, cfg.model = data, model
    return cfg
