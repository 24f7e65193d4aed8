"""visualize.py: one picture of what a stage of the detector does."""

import logging
from pathlib import Path

from hydra.utils import instantiate

from frcnn.figures import make_figure
from frcnn.predict import Predictor

log = logging.getLogger(__name__)


def visualize(cfg) -> Path:
    """visualize.py: one PNG of `cfg.what` for a checkpoint (or random weights) and an image
    (or a validation sample of `cfg.data`), SIZES[what] inches at `cfg.dpi`. Returns its path."""
    if cfg.ckpt_path:
        predictor = Predictor.from_checkpoint(cfg.ckpt_path, cfg.trainer.accelerator)
    else:
        model = instantiate({**cfg.model, "backbone": {**cfg.model.backbone, "weights": None}})
        predictor = Predictor(
            model, cfg.data.image_size, cfg.data.resize, device=cfg.trainer.accelerator
        )
    model = predictor.model
    if cfg.image:
        image, target = predictor.prepare(cfg.image)[0], None
    else:
        datamodule = instantiate(cfg.data)
        datamodule.setup("validate")
        image, target = datamodule.val_set[cfg.index]
        predictor.class_names = predictor.class_names or datamodule.class_names
    figure = make_figure(
        cfg.what, model, image, target, predictor.class_names, cfg.level, cfg.top_n
    )
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{cfg.what}.png"
    figure.savefig(path, dpi=cfg.dpi)
    log.info("Wrote %s", path)
    return path
