"""Checkpoints of this project: loaded safely, and the detector rebuilt from the config they carry.

A checkpoint written by `train.py` holds the weights (`state_dict`, keys `model.*`), the resolved
run config (`config`), the class names and the data set's category ids. That is all `eval.py`,
`predict.py` and `visualize.py` need: no download, no training data.
"""

import pickle
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from frcnn.model import FasterRCNN


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint of this project with `weights_only=True` (tensors and plain data only).

    A file that is not a checkpoint of this project, or one carrying objects that would run
    code when unpickled, is refused with a message that names it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={str(path)!r}: no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"ckpt_path={str(path)!r} was not loaded: it is not a checkpoint of this project, "
            f"or it holds objects that could run code when opened ({reason})"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(
            f"ckpt_path={str(path)!r} is not a checkpoint of this project: it has no state_dict"
        )
    if not checkpoint.get("config"):
        raise ValueError(
            f"ckpt_path={str(path)!r} holds no run config: was it written by this project's "
            "train.py?"
        )
    return checkpoint


def model_config(checkpoint: dict, overrides: dict | None = None) -> dict:
    """The detector settings a checkpoint was trained with, `overrides` (nested) on top.

    The backbone's pretrained weights are switched off: the checkpoint replaces them anyway.
    """
    config = OmegaConf.create(checkpoint["config"]["model"])
    if overrides:
        config = OmegaConf.merge(config, overrides)
    config.backbone.weights = None
    return OmegaConf.to_container(config, resolve=True)


def detector_state(checkpoint: dict) -> dict:
    """The detector's own state dict out of a Lightning checkpoint (keys `model.*`)."""
    return {
        k.removeprefix("model."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("model.")
    }


def detector_from_checkpoint(checkpoint: dict, overrides: dict | None = None) -> FasterRCNN:
    """Rebuild the trained detector (weights loaded strictly); `overrides` as in `model_config`."""
    model = instantiate(model_config(checkpoint, overrides))
    try:
        model.load_state_dict(detector_state(checkpoint))
    except RuntimeError as err:
        raise RuntimeError(
            "The checkpoint's weights do not fit the detector built from its config and the "
            "command line's model options: override post-processing settings only "
            f"(score_thresh, nms_thresh, detections_per_img, ...).\n{err}"
        ) from err
    return model
