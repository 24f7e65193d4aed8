"""train.py: fit, validate the best checkpoint on the whole validation split, summarise."""

import logging
import shlex
import signal
import sys
import time
import warnings
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from frcnn.app.build import (
    build,
    config_differences,
    final_metrics,
    output_dir,
    shown,
    stops_other_processes_on_error,
    wait_for_other_processes,
)
from frcnn.app.command import run_of
from frcnn.app.summary import finish
from frcnn.structures import counted
from frcnn.training.callbacks import Preemption
from frcnn.training.checkpoint import detector_state, load_checkpoint

log = logging.getLogger(__name__)


def train(cfg: DictConfig, datamodule=None) -> float | None:
    """Fit the model; return the value of `cfg.optimized_metric` (for sweepers). `datamodule`:
    one made in Python (`frcnn.fit`) in place of `cfg.data`'s."""
    started = time.monotonic()
    own = None if cfg.get("ckpt_path") else latest_own_checkpoint(output_dir())
    if own:
        cfg.ckpt_path = str(own)  # a requeued job, a trial run again: it goes on
    resumed = load_checkpoint(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    datamodule, module, trainer = build(cfg, datamodule, resumed)
    first_step = 0
    if resumed is not None:
        check_resumable(module, resumed, cfg)
        first_step = resumed.get("global_step", 0)
        if own or run_of(cfg.ckpt_path) == output_dir():
            # its run folder (conf/hydra: run_dir): the checkpoints there are this run's own
            warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")
            verb = "Resuming in"
        else:
            verb = "Resuming into a new folder"
        if trainer.is_global_zero:
            log.info("%s %s from %s", verb, shown(output_dir()), shown(cfg.ckpt_path))
    elif trainer.is_global_zero:
        log.info("Output directory: %s", shown(output_dir()))
    try:
        # weights_only: a checkpoint holds tensors and plain data (load_checkpoint checked it)
        with stops_other_processes_on_error(trainer):
            trainer.fit(
                module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True
            )
    except SIGTERMException:
        stopped(trainer, cfg, started)
    say_what_was_left_undone(trainer, first_step)
    value = finish(trainer, cfg, started, validate_best(trainer, module, datamodule))
    wait_for_other_processes(trainer)
    return value


def say_what_was_left_undone(trainer: L.Trainer, first_step: int) -> None:
    """A run that trained no step (resumed past a limit), or validated never (shorter than one
    validation interval), says so, with the setting that decides it."""
    if not trainer.is_global_zero:
        return
    if trainer.global_step == first_step:
        steps, epochs = trainer.max_steps, trainer.max_epochs
        limit = (
            f"trainer.max_steps={steps}"
            if 0 <= steps <= first_step
            else f"trainer.max_epochs={epochs}"
        )
        log.warning(
            "No step was trained: the run is at step %d, after %d epochs, which %s has reached; "
            "set it higher (trainer.max_epochs=-1 counts steps only) to train on",
            first_step, trainer.current_epoch, limit,
        )  # fmt: skip
    elif not any(name.startswith("val/") for name in trainer.callback_metrics):
        log.warning(
            "No validation ran: the run's %s ended before the first one "
            "(trainer.check_val_every_n_epoch=%s, trainer.val_check_interval=%s), so it has no "
            "validation figures and no best checkpoint; validate its last.ckpt with eval.py",
            counted(trainer.global_step - first_step, "step"), trainer.check_val_every_n_epoch,
            trainer.val_check_interval,
        )  # fmt: skip


def latest_own_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a run folder already holds, to go on from: the newer of
    `checkpoints/last.ckpt` (written at every validation and on SIGTERM) and Lightning's
    `hpc_ckpt_<n>.ckpt` (SLURM's requeue signal). A run finds one when its folder is not new:
    a SLURM job requeued into `runs/slurm-<job id>`, a sweep trial run again in its folder."""
    found = [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")]
    found = [path for path in found if path.is_file()]
    return max(found, key=lambda path: path.stat().st_mtime_ns) if found else None


def stopped(trainer: L.Trainer, cfg: DictConfig, started: float) -> None:
    """After SIGTERM (a scheduler preempts the job) or SIGINT (Ctrl-C): `Preemption` stopped
    after a step and `LastCheckpoint` saved last.ckpt there. Summarise the run so far, say how
    to resume, and exit with status 128 + the signal (143, 130) so that a scheduler does not
    take it for done."""
    # no report: seconds that a scheduler's grace time needs
    finish(trainer, cfg, started, stopped=True)
    last = next((c.best_model_path for c in trainer.checkpoint_callbacks if not c.monitor), "")
    preemption = next(c for c in trainer.callbacks if isinstance(c, Preemption))
    signum = preemption.stopped_by or signal.SIGTERM
    if trainer.is_global_zero:
        hydra = HydraConfig.get()
        # a script of frcnn.fit (data=python) gives its data's overrides itself
        fit = hydra.runtime.choices.get("data") == "python"
        own = ("ckpt_path=", "data=python", "++data.") if fit else ("ckpt_path=",)
        overrides = [o for o in hydra.overrides.task if not o.startswith(own)]
        script = Path(sys.argv[0]).name
        resume = shlex.join(["uv", "run", script, *overrides, f"ckpt_path={shown(last)}"])
        log.error(
            "Stopped by %s at step %d. %s\nResume with: %s",
            signum.name,
            trainer.global_step,
            f"{shown(last)} holds this step." if last else "No last.ckpt was written.",
            resume if last else "(no checkpoint)",
        )
    sys.exit(128 + signum)


def check_resumable(module, checkpoint: dict, cfg: DictConfig) -> None:
    """A checkpoint to resume from must hold this config's detector, trained on this data's
    classes in this order: else name the settings or the classes that differ (rather than a
    dump of mismatched tensor shapes, or a run that trains each label as another class)."""
    saved_names = checkpoint.get("class_names")
    if saved_names and module.class_names and list(saved_names) != module.class_names:
        raise ValueError(
            f"ckpt_path={cfg.ckpt_path!r} was trained on the classes {', '.join(saved_names)}; "
            f"this data's labels are {', '.join(module.class_names)}: resumed, each label "
            "would go on as another class. Resume with the data it was trained on, or start "
            "from its weights on this data with init_weights= (its rows carried over by class "
            "name)"
        )
    saved_anchors = checkpoint["config"]["model"].get("anchors")
    anchors = OmegaConf.to_container(cfg.model, resolve=True).get("anchors")
    if saved_anchors != anchors:  # same tensor shapes, other boxes: the regressions mean nothing
        differ = [
            f"model.anchors.{key}: {old!r} in the checkpoint, {new!r} here"
            for key, old, new in config_differences(saved_anchors or {}, anchors or {})
        ]
        raise ValueError(
            f"ckpt_path={cfg.ckpt_path!r} was trained with other anchors; resume with the "
            "anchors it was trained with (anchors=...):\n  " + "\n  ".join(differ)
        )
    try:
        module.model.load_state_dict(detector_state(checkpoint))
    except RuntimeError as err:
        saved = checkpoint["config"]["model"]
        ours = OmegaConf.to_container(cfg.model, resolve=True)
        differ = [
            f"model.{key}: {old!r} in the checkpoint, {new!r} here"
            for key, old, new in config_differences(saved, ours)
        ]
        raise ValueError(
            f"ckpt_path={cfg.ckpt_path!r} holds another detector than this config builds; "
            "resume with the options it was trained with (experiment, model, anchors, "
            "frozen, data.num_classes). Settings that differ:\n  "
            + ("\n  ".join(differ) or f"(none in the config) {str(err).splitlines()[0]}")
        ) from err


def validate_best(trainer: L.Trainer, module, datamodule) -> dict[str, float]:
    """The final figures of a run: its best checkpoint validated on the whole validation split.

    Training validates on a fixed subset where the data config sets one (`data.val.limit`);
    its last figures are kept beside the final ones as `subset/val/...`. Without a subset, a
    best checkpoint written at the last step has just been validated: its figures are the last
    ones, not computed twice. Returns the training and final metrics.
    """
    metrics = final_metrics(trainer)
    callback = next((c for c in trainer.checkpoint_callbacks if c.monitor), None)
    best = callback.best_model_path if callback else ""
    if not best:
        return metrics
    subset = datamodule.use_full_validation()
    checkpoint = load_checkpoint(best)
    if (
        not subset
        and checkpoint["global_step"] == trainer.global_step
        and callback.monitor in trainer.callback_metrics
    ):
        return metrics  # the best is the last step's, just validated on the same set
    if trainer.is_global_zero:
        log.info(
            "Validating the best checkpoint %s on the %s",
            shown(best),
            "whole validation split" if subset else "validation set",
        )
    # not on the training curves (it may be another set): the summary and hparams show it
    loggers, trainer.loggers = trainer.loggers, []
    # the weights alone: validate(ckpt_path=...) would also restore the callbacks' state of
    # that moment (the summary would lose a last.ckpt written after it)
    module.load_state_dict(checkpoint["state_dict"])
    trainer.validate(module, datamodule=datamodule, verbose=False)  # the summary says
    trainer.loggers = loggers
    final = {k: v for k, v in final_metrics(trainer).items() if k.startswith("val/")}
    if subset:
        final |= {f"subset/{k}": v for k, v in metrics.items() if k.startswith("val/")}
    return {k: v for k, v in metrics.items() if not k.startswith("val/")} | final
