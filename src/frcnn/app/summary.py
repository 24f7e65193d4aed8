"""The end of a run: its final metrics, stored for sweeps and printed as a summary, and the
report of its final evaluation."""

import logging
import math
import time
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from frcnn.app.build import final_metrics, given_keys, output_dir, report_wanted, shown
from frcnn.data.sources import SKIPPED
from frcnn.evaluation.report import write_report
from frcnn.evaluation.results import COLUMNS, per_class_table, write_per_class
from frcnn.evaluation.tables import markdown_table
from frcnn.structures import counted
from frcnn.training.callbacks import WeightEMA
from frcnn.training.sweep import write_run_metrics

log = logging.getLogger(__name__)


def summarise(
    trainer: L.Trainer,
    cfg: DictConfig,
    metrics: dict[str, float],
    seconds: float,
    stopped: bool = False,
) -> None:
    """Log hyperparameters with the final metrics, store them for sweeps, print a summary (the
    run took `seconds`) and (unless `stopped` early, where `report_wanted`) write the final
    evaluation's report (on the first process only, under DDP)."""
    if not trainer.is_global_zero:
        return
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            log_hparams(logger, cfg, metrics, trainer.global_step)
    write_run_metrics(output_dir(), HydraConfig.get().overrides.task, metrics, seconds=seconds)
    ended = f"stopped after {took(seconds)}" if stopped else f"finished in {took(seconds)}"
    lines = ["", f"{cfg.task_name} {ended}. Outputs: {shown(output_dir())}"]
    lines += output_lines(trainer) + metric_lines(metrics) + skip_lines(trainer.world_size)
    evaluation = getattr(trainer.lightning_module, "evaluation", None)
    if evaluation is not None and evaluation.classes:  # the final one (train: the best's)
        report = not stopped and report_wanted(cfg)
        lines += per_class_lines(trainer, cfg, evaluation, metrics, report)
    log.info("\n".join(lines))


def took(seconds: float) -> str:
    """A run's duration as a person says it: `41 s`, `3 min 41 s`, `2 h 05 min`."""
    minutes, second = divmod(round(seconds), 60)
    hours, minute = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minute:02d} min"
    return f"{minute} min {second} s" if minute else f"{second} s"


def output_lines(trainer: L.Trainer) -> list[str]:
    """Where the run's checkpoints and TensorBoard events are (and the weights they hold)."""
    lines = []
    for checkpoint in trainer.checkpoint_callbacks:
        if checkpoint.monitor and checkpoint.best_model_path:
            best = checkpoint.best_model_score  # None when resumed from another run's folder
            score = "not validated in this run" if best is None else f"{float(best):.4f}"
            lines.append(
                f"  best checkpoint: {shown(checkpoint.best_model_path)} "
                f"({checkpoint.monitor}={score})"
            )
        elif checkpoint.best_model_path:
            lines.append(f"  last checkpoint: {shown(checkpoint.best_model_path)}")
    ema = next((c for c in trainer.callbacks if isinstance(c, WeightEMA)), None)
    if ema:
        lines.append(
            f"  weights:         the moving average (ema.decay={ema.decay}, "
            f"warmup_steps={ema.warmup_steps}): validated, in the checkpoints' state_dict"
        )
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):  # the folder its events were written to
            lines.append(f"  TensorBoard:     uv run tensorboard --logdir {shown(logger.log_dir)}")
    return lines


def metric_lines(metrics: dict[str, float | int]) -> list[str]:
    """The final val/ metrics (not per class), with the training subset's beside them; a count
    (an int: `val/images`) as a whole number."""
    names = [k for k in metrics if k.startswith("val/") and "/ap/" not in k]
    width = max((len(k) for k in names), default=0)
    lines = []
    if any(k.startswith("subset/") for k in metrics):
        lines.append(f"  {'':<{width}}  {'whole':>7}  {'subset':>7}  (validation split)")
    for k in names:
        figures = [metrics[k], metrics.get(f"subset/{k}")]
        cells = [f"{v:7d}" if isinstance(v, int) else f"{v:7.4f}" for v in figures if v is not None]
        lines.append(f"  {k:<{width}}  " + "  ".join(cells))
    return lines


def skip_lines(processes: int) -> list[str]:
    """The images that the run's data sources skipped or repaired (`sources.SKIPPED`), per
    source and reason: each was a warning in the log, which a long run scrolls away."""
    if not SKIPPED:
        return []
    share = " (the first process's share of the data)" if processes > 1 else ""
    log_file = f"{HydraConfig.get().job.name}.log"  # (Hydra's job log: train.log, eval.log)
    lines = ["", f"Images skipped or repaired{share}, each a warning in {log_file}:"]
    for (source, reason), images in sorted(SKIPPED.items()):
        lines.append(f"  {source}: {reason}: {counted(len(images), 'image')}")
    return lines


def per_class_lines(trainer, cfg: DictConfig, evaluation, metrics: dict, report: bool) -> list:
    """The per-class table (its worst and best rows where there are many), written to
    report/ with the whole `report` or alone."""
    rows = per_class_table(
        evaluation.precision,
        evaluation.classes,
        evaluation.class_names,
        evaluation.boxes_per_class(),
    )
    folder = output_dir() / "report"
    table = markdown_table(printed_rows(rows), COLUMNS).rstrip()
    if not report:  # the table alone, which costs nothing
        folder.mkdir(parents=True, exist_ok=True)
        write_per_class(rows, folder)
        where = shown(folder / "per_class.csv")
        return ["", f"Per class, the worst AP first (also in {where}):", table]
    evaluation.metrics = {k: v for k, v in metrics.items() if k.startswith("val/")}
    model = trainer.lightning_module.model
    sampling = getattr(trainer.datamodule, "sampling", None)
    index = write_report(evaluation, folder, model, cfg.report_score_threshold, sampling)
    what = "PR curves, confusion matrix, errors, data and anchors"
    return ["", "Per class, the worst AP first:", table, "", f"Report ({what}): {shown(index)}"]


def log_hparams(
    logger: TensorBoardLogger, cfg: DictConfig, metrics: dict[str, float], step: int
) -> None:
    """Give TensorBoard's HParams tab the run's settings that tell runs apart (`compared`) and
    its final validation metrics, and `hparams.yaml` the whole resolved config.

    The metrics go to a run of their own, `final/`, under their curves' names: in the Scalars
    tab they are a point at `step` beside the curves (the best checkpoint's figures, maybe on
    another validation set), not single-point `hp/*` cards before them."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    # Lightning writes hparams.yaml once, at the start, with the module's (none)
    OmegaConf.save(config, Path(logger.log_dir) / "hparams.yaml")
    final = {k: v for k, v in metrics.items() if k.startswith("val/")}
    logger.experiment.add_hparams(compared(cfg), final, run_name="final", global_step=step)


def compared(cfg: DictConfig) -> dict[str, str | int | float | bool]:
    """What tells a run apart from others, in the order a user reads it: the seed, the config
    groups' choices and the settings the command line gave (a sweep's parameters).

    Not the whole config: its hundred-odd keys would come before the metrics in the HParams
    table (TensorBoard lists hyperparameters first)."""
    hydra = HydraConfig.get()
    values = {"seed": cfg.seed}
    values |= {
        group: choice
        # Hydra lists the defaults last to first: data, model, anchors, ... read first
        for group, choice in reversed(hydra.runtime.choices.items())
        if choice is not None and not group.startswith("hydra")
    }
    for key in sorted(given_keys(hydra.overrides.task) - set(values)):
        value = OmegaConf.select(cfg, key, default=None)
        if not isinstance(value, DictConfig):  # a group's choice is listed above
            values[key] = value if isinstance(value, int | float | str | bool) else str(value)
    return values


def printed_rows(rows: list[dict], shown: int = 5) -> list[dict]:
    """The per-class rows a summary prints: all of a few classes; of many (COCO's 80), the
    `shown` worst and best scored, and a row that counts the rest (the files have them all)."""
    if len(rows) <= 2 * shown + 1:
        return rows
    scored = [row for row in rows if row["AP"] == row["AP"]]  # nan (no ground truth): last
    kept = scored[:shown] + scored[-shown:] if len(scored) > 2 * shown else scored
    left = len(rows) - len(kept)
    return [*kept[:shown], {"class": f"... {left} more (per_class.csv)"}, *kept[shown:]]


def finish(
    trainer: L.Trainer,
    cfg: DictConfig,
    started: float,
    metrics: dict | None = None,
    stopped: bool = False,
) -> float | None:
    """Summarise the run (its final `metrics`, by default the last logged ones; `started`: its
    `time.monotonic()` at the start) and write its report (not for a run `stopped` early);
    return the optimised metric, None where there is none."""
    metrics = final_metrics(trainer) if metrics is None else metrics
    summarise(trainer, cfg, metrics, time.monotonic() - started, stopped)
    value = metrics.get(cfg.optimized_metric)
    return None if value is None or math.isnan(value) else value
