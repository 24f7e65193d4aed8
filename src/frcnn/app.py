"""What train.py and eval.py do: build everything from the Hydra config, run, summarise."""

import logging
import math
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from frcnn.model.convert import load_torchvision_weights, torchvision_state_dict
from frcnn.sweep import write_run_metrics

log = logging.getLogger("frcnn")


def build(cfg: DictConfig):
    """-> (datamodule, module, trainer), all from the config."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # fail now, not after the model is built, if the data is not there
    model = instantiate(cfg.model)
    if cfg.get("init_weights"):
        left_out = load_torchvision_weights(model, torchvision_state_dict(cfg.init_weights))
        log.info("Weights from %s; left as initialised: %s", cfg.init_weights, left_out or "none")
    module = instantiate(cfg.module)(
        model=model, class_names=datamodule.class_names, category_ids=datamodule.category_ids
    )
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, module, trainer


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The last logged value of every validation and epoch-level training metric."""
    metrics = {}
    for name, value in sorted(trainer.callback_metrics.items()):
        if name.startswith(("val/", "train/")) and not name.endswith("_step"):
            metrics[name.removesuffix("_epoch")] = float(value)
    return metrics


def summarise(trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, float]) -> None:
    """Log hyperparameters with the final metrics, store them for sweeps, print a summary."""
    if trainer.is_global_zero:
        hparams = OmegaConf.to_container(cfg, resolve=True)
        hparams.pop("hydra", None)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(hparams, metrics={f"hp/{k}": v for k, v in metrics.items()})
        write_run_metrics(output_dir(), HydraConfig.get().overrides.task, metrics)

    lines = ["", f"{cfg.task_name} finished. Outputs: {output_dir()}"]
    for checkpoint in trainer.checkpoint_callbacks:
        if checkpoint.monitor and checkpoint.best_model_path:
            score = f"{checkpoint.monitor}={float(checkpoint.best_model_score):.4f}"
            lines.append(f"  best checkpoint: {checkpoint.best_model_path} ({score})")
        elif checkpoint.best_model_path:
            lines.append(f"  last checkpoint: {checkpoint.best_model_path}")
    if any(isinstance(lg, TensorBoardLogger) for lg in trainer.loggers):
        lines.append(f"  TensorBoard:     tensorboard --logdir {cfg.paths.log_dir}")
    shown = [k for k in metrics if k.startswith("val/") and "/ap/" not in k]
    width = max((len(k) for k in shown), default=0)
    lines += [f"  {k:<{width}}  {metrics[k]:.4f}" for k in shown]
    log.info("\n".join(lines))


def train(cfg: DictConfig) -> float | None:
    """Fit the model; return the value of `cfg.optimized_metric` (for sweepers)."""
    datamodule, module, trainer = build(cfg)
    log.info("Output directory: %s", output_dir())
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    return finish(trainer, cfg)


def evaluate(cfg: DictConfig) -> float | None:
    """Validate a checkpoint under the config's (e.g. post-processing) settings."""
    checkpoint = Path(cfg.ckpt_path)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"ckpt_path={str(checkpoint)!r}: no such file")
    datamodule, module, trainer = build(cfg)
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise RuntimeError(
            f"The checkpoint {checkpoint} does not fit the model of this config: pass the same "
            "experiment / model / anchors options as in training.\n" + str(err)
        ) from err
    trainer.validate(module, datamodule=datamodule)
    return finish(trainer, cfg)


def finish(trainer: L.Trainer, cfg: DictConfig) -> float | None:
    """Summarise the run; return the optimised metric, None where there is none."""
    metrics = final_metrics(trainer)
    summarise(trainer, cfg, metrics)
    value = metrics.get(cfg.optimized_metric)
    return None if value is None or math.isnan(value) else value
