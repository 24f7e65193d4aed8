"""eval.py: a checkpoint validated under the config's (e.g. post-processing) settings."""

import itertools

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from frcnn.app.build import (
    build_trainer,
    checkpoint_run_config,
    given_keys,
    quiet_libraries,
    stops_other_processes_on_error,
    wait_for_other_processes,
)
from frcnn.app.report import finish
from frcnn.checkpoint import detector_from_checkpoint, load_checkpoint


def evaluate(cfg: DictConfig) -> float | None:
    """Validate a checkpoint under the config's (e.g. post-processing) settings.

    Only the checkpoint and the validation data are needed: the detector and the data come
    from the config saved in the checkpoint, with what the command line sets on top.
    """
    quiet_libraries()
    checkpoint = load_checkpoint(cfg.ckpt_path)
    overrides = HydraConfig.get().overrides.task
    cfg = checkpoint_run_config(cfg, checkpoint["config"], overrides)
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    if "data.val.limit" not in given_keys(overrides):
        datamodule.use_full_validation()  # not the training run's subset
    datamodule.setup("validate")
    same_classes(checkpoint.get("class_names"), datamodule.class_names)
    model = detector_from_checkpoint(checkpoint, cfg.model)
    module = instantiate(cfg.module)(
        model=model,
        class_names=checkpoint.get("class_names"),
        category_ids=checkpoint.get("category_ids"),
    )
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    trainer = build_trainer(cfg)
    with stops_other_processes_on_error(trainer):
        trainer.validate(module, datamodule=datamodule)
    value = finish(trainer, cfg)
    wait_for_other_processes(trainer)
    return value


def same_classes(trained: list[str] | None, data: list[str]) -> None:
    """The validation data's classes must be the checkpoint's, label for label: else each of
    the data's labels is scored as the checkpoint's class of that number (a person as a
    "green ellipse"). Raises naming the labels that differ."""
    if not trained or list(trained) == list(data):
        return
    pairs = itertools.zip_longest(trained, data, fillvalue="(none)")
    differ = [f"{i}: {a!r} / {b!r}" for i, (a, b) in enumerate(pairs, 1) if a != b]
    raise ValueError(
        f"the data's {len(data)} classes are not the checkpoint's {len(trained)}: its labels "
        f"would be scored as other classes. Label: checkpoint / data: {'; '.join(differ[:6])}"
        f"{'; ...' if len(differ) > 6 else ''}. Evaluate on data of the classes the checkpoint "
        "was trained on, in its order"
    )
