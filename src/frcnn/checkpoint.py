"""Checkpoints of this project: written whole or not at all, loaded safely, and the detector
rebuilt from the config they carry.

A checkpoint written by `train.py` holds the weights (`state_dict`, keys `model.*`), the resolved
run config (`config`), the class names and the data set's category ids. That is all `eval.py`,
`predict.py` and `visualize.py` need: no download, no training data. Trained with `ema=on`, its
`state_dict` is the weights' moving average (`"weights": "ema"`; the raw weights are in
`current_model_state`), which they all use.
"""

import logging
import os
import pickle
from pathlib import Path

import torch
from hydra.utils import instantiate
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import OmegaConf

from frcnn.model import FasterRCNN

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic: the checkpoint goes to a temporary file in
    the same folder, is flushed to the disk, then renamed over the old one (a rename within one
    file system replaces it whole). A write that fails (a full disk, no permission, a kill)
    leaves the previous checkpoint as it was; the error names the file and stops the run.
    (Lightning's own writer copies a finished file over the old one, in place, when the folder
    lies on another file system than the temporary folder.)"""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException as err:
            temporary.unlink(missing_ok=True)
            if isinstance(err, OSError):
                raise OSError(
                    err.errno,
                    f"the checkpoint {path} could not be written ({err.strerror or err}); "
                    "the one before it is kept",
                ) from err
            raise


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint of this project with `weights_only=True` (tensors and plain data only).

    A file that is not a checkpoint of this project, or one carrying objects that would run
    code when unpickled, is refused with a message that names it.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.ckpt"))
        hint = f"; it holds {', '.join(inside)}" if inside else ""
        raise IsADirectoryError(f"ckpt_path={str(path)!r} is a folder: give a .ckpt file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={str(path)!r}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(
            f"ckpt_path={str(path)!r} is empty (0 bytes): a write that did not finish? Use "
            "another checkpoint of the run"
        )
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
    if checkpoint.get("weights") == "ema":
        log.info("The checkpoint's weights: their moving average (it was trained with ema=on)")
    return model
