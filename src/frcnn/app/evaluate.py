"""eval.py: a checkpoint validated under the config's (e.g. post-processing) settings."""

import logging
import time

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from frcnn.app.build import (
    build_trainer,
    check_seed,
    check_trainer,
    checkpoint_run_config,
    given_keys,
    quiet_libraries,
    stops_other_processes_on_error,
    wait_for_other_processes,
)
from frcnn.app.summary import finish
from frcnn.checks import check_gpu
from frcnn.training.checkpoint import detector_from_checkpoint, load_checkpoint

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> float | None:
    """Validate a checkpoint under the config's (e.g. post-processing) settings.

    Only the checkpoint and the validation data are needed: the detector and the data come
    from the config saved in the checkpoint, with what the command line sets on top.
    """
    started = time.monotonic()
    quiet_libraries()
    check_gpu("device", cfg.trainer.accelerator)
    checkpoint = load_checkpoint(cfg.ckpt_path)
    overrides = HydraConfig.get().overrides.task
    cfg = checkpoint_run_config(cfg, checkpoint["config"], overrides)
    check_trainer(cfg.trainer)
    check_seed(cfg.seed)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    if "data.val.limit" not in given_keys(overrides):
        datamodule.use_full_validation()  # not the training run's subset
    datamodule.setup("validate")
    by_name(datamodule, checkpoint)
    model = detector_from_checkpoint(checkpoint, cfg.model)
    module = instantiate(cfg.module)(
        model=model,
        class_names=checkpoint.get("class_names"),
        category_ids=checkpoint.get("category_ids"),
    )
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    trainer = build_trainer(cfg)
    with stops_other_processes_on_error(trainer):
        trainer.validate(module, datamodule=datamodule, verbose=False)  # the summary says
    value = finish(trainer, cfg, started)
    wait_for_other_processes(trainer)
    return value


def by_name(datamodule, checkpoint: dict) -> None:
    """The data's classes scored as the checkpoint's classes of the same names (a data set of
    some of them, or in another order): else a label would be scored as the checkpoint's
    class of that number (a person as a "green ellipse"). Raises naming the data's classes
    that the checkpoint lacks."""
    names = checkpoint.get("class_names")
    if not names:  # a checkpoint saved before class names were
        return
    data_names = datamodule.class_names
    moved = datamodule.number_as(names, checkpoint.get("category_ids"))
    if moved:
        log.info(
            "The data's classes scored as the checkpoint's of the same names: %s",
            ", ".join(f"{data_names[i - 1]!r} {i} -> {label}" for i, label in moved.items()),
        )
