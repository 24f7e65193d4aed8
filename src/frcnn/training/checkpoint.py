"""Checkpoints of this project: written whole or not at all, loaded safely, and the detector
rebuilt from the config they carry.

A checkpoint written by `train.py` holds the weights (`state_dict`, keys `model.*`), the resolved
run config (`config`), the class names and the data set's category ids. That is all `eval.py`,
`predict.py` and `visualize.py` need: no download, no training data. Trained with `ema=on`, its
`state_dict` is the weights' moving average (`"weights": "ema"`; the raw weights are in
`current_model_state`), which they all use.

A checkpoint is data, never code: it is read with `weights_only=True`, and its saved config is
never handed to Hydra's `instantiate` as it is (which calls whatever a `_target_` names: a file
write, a pickle loader). The detector is built from `FasterRCNN` and plain values
(`build_detector`); a saved data config may name only this project's data module and sources
(`refuse_code`); anything else is refused with the key that names it.
"""

import logging
import os
import pickle
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import OmegaConf
from packaging.version import InvalidVersion, Version

from frcnn.checks import path_of
from frcnn.data import SOURCES, DetectionDataModule
from frcnn.model import FasterRCNN
from frcnn.model.convert import (
    from_torchvision_keys,
    is_torchvision_state_dict,
    torchvision_class_names,
    torchvision_coco_weights,
)

log = logging.getLogger(__name__)


def target_names(cls: type, package: str) -> set[str]:
    """The `_target_` strings that name `cls`: its module's path and its package's export."""
    return {f"{cls.__module__}.{cls.__qualname__}", f"{package}.{cls.__name__}"}


# the only callables a checkpoint's saved config may name (compared as strings: resolving a
# name imports its module, which is running code already)
DETECTOR_TARGETS = frozenset(target_names(FasterRCNN, "frcnn.model"))
DATA_TARGETS = frozenset().union(
    *(target_names(cls, "frcnn.data") for cls in (DetectionDataModule, *SOURCES))
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic: the checkpoint goes to a temporary file in
    the same folder, is flushed to the disk, then renamed over the old one (a rename within one
    file system replaces it whole). A write that fails (a full disk, no permission, a kill)
    leaves the previous checkpoint as it was; the error names the file and stops the run.
    (Lightning's own writer copies a finished file over the old one, in place, when the folder
    lies on another file system than the temporary folder.)

    `same_as`: a checkpoint file that the next one written equals (`LastCheckpoint` sets it
    where the best checkpoint was just written, of the same state): that one becomes a second
    name of it (a hard link: nothing written, no more disk), or is written where the file
    system has none."""

    same_as: Path | None = None

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        path = Path(path)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        same, self.same_as = self.same_as, None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not (same and hard_linked(same, temporary)):
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


def hard_linked(source: Path, link: Path) -> bool:
    """`link` made a second name of the file `source`; False where that fails (a file system
    without hard links, `source` gone)."""
    try:
        os.link(source, link)
    except OSError:
        return False
    return True


def read_file(path: str | Path | None, key: str = "ckpt_path"):
    """What a file of tensors and plain data holds, read with `weights_only=True`; no path, a
    folder, a missing or empty file, or one carrying objects that would run code when unpickled
    is refused with a message that names it (as the setting `key`)."""
    if path is None:
        raise ValueError(f"{key} is not set: give it, {key}=<run>/checkpoints/last.ckpt")
    path = path_of(key, path)
    if path.is_dir():  # a run folder keeps its checkpoints in checkpoints/
        found = [*path.glob("*.ckpt"), *path.glob("checkpoints/*.ckpt")]
        inside = sorted(str(p.relative_to(path)) for p in found)
        hint = f"; it holds {', '.join(inside)}" if inside else ""
        raise IsADirectoryError(f"{key}={str(path)!r} is a folder: give a .ckpt file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"{key}={str(path)!r}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(
            f"{key}={str(path)!r} is empty (0 bytes): a write that did not finish? Use "
            "another checkpoint of the run"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{key}={str(path)!r} was not loaded: it is not a checkpoint of this project, "
            f"or it holds objects that could run code when opened ({reason})"
        ) from err


def load_checkpoint(path: str | Path | None, key: str = "ckpt_path") -> dict:
    """Read a checkpoint of this project (`read_file`). A file that is not one, or whose saved
    config holds interpolations, is refused with a message that names it."""
    return checked(read_file(path, key), f"{key}={str(Path(path).expanduser())!r}")


def checked(checkpoint, named: str) -> dict:
    """`checkpoint` if it is one of this project's (weights and a plain saved config)."""
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        what = (
            "it holds torchvision's Faster R-CNN weights, which train.py starts from with "
            "init_weights=<the file>"
            if is_torchvision_state_dict(checkpoint)
            else "it has no state_dict"
        )
        raise ValueError(f"{named} is not a checkpoint of this project: {what}")
    if not checkpoint.get("config"):
        raise ValueError(f"{named} holds no run config: was it written by this project's train.py?")
    version = checkpoint.get("pytorch-lightning_version")
    try:
        Version(str(version))
    except InvalidVersion:
        raise ValueError(
            f"{named} names no Lightning version it was written with "
            f"(pytorch-lightning_version={version!r}): was it written by this project's train.py?"
        ) from None
    saved = {section: checkpoint["config"].get(section) for section in ("model", "data")}
    found = next(interpolations(saved), None)
    if found:
        raise ValueError(
            f"{named} was not loaded: its config's {found[0]}={found[1]!r} is an "
            "interpolation; a checkpoint's saved config holds resolved, plain values only"
        )
    return checkpoint


def entries(config, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(dotted key, value) of every leaf of nested dicts and lists (`_target_`s included)."""
    if isinstance(config, dict):
        for key, value in config.items():
            yield from entries(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(config, list | tuple):
        for index, value in enumerate(config):
            yield from entries(value, f"{prefix}.{index}")
    else:
        yield prefix, config


def interpolations(config) -> Iterator[tuple[str, str]]:
    """(dotted key, value) of every string that OmegaConf would resolve (`${...}`)."""
    return ((k, v) for k, v in entries(config) if isinstance(v, str) and "${" in v)


def refuse_code(
    config: dict,
    prefix: str,
    allowed: Iterable[str] = (),
    trusted: Iterable[str] = (),
    source: str = "the checkpoint's ",
) -> None:
    """Raise if the settings `config` (under the key `prefix`, read from `source`) name a
    `_target_` outside `allowed`, except at keys under one of `trusted` (those the command line
    sets: the user's own choice of code)."""
    allowed, trusted = set(allowed), tuple(trusted)
    for key, value in entries(config, prefix):
        if not key.endswith("._target_") or value in allowed:
            continue
        if any(key == t or key.startswith(f"{t}.") for t in trusted):
            continue
        rule = (
            f"may name only this project's own classes ({', '.join(sorted(allowed))}); if you "
            f"trust that code, give it on the command line: {key}={value}"
            if allowed
            else "holds plain values here"
        )
        raise ValueError(
            f"{source}{key}={value!r} was refused: a checkpoint's config is data, never code, "
            f"and {rule}"
        )


def model_config(checkpoint: dict, overrides: dict | None = None) -> dict:
    """The detector settings a checkpoint was trained with, `overrides` (nested) on top.

    The backbone's pretrained weights are switched off: the checkpoint replaces them anyway.
    """
    config = OmegaConf.create(checkpoint["config"]["model"])
    if overrides:
        config = OmegaConf.merge(config, overrides)
    if "backbone" in config:  # (without one: the default backbone, which has no weights)
        config.backbone.weights = None
    return OmegaConf.to_container(config, resolve=True)


def detector_state(checkpoint: dict) -> dict:
    """The detector's own state dict out of a Lightning checkpoint (keys `model.*`)."""
    return {
        k.removeprefix("model."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("model.")
    }


def build_detector(config: dict, source: str = "the checkpoint's ") -> FasterRCNN:
    """`FasterRCNN(**config)` for the plain settings of a `model` config (a run's, or one saved
    in a checkpoint): its `_target_` may only name `FasterRCNN`, and nothing inside it may
    name code (refused with the key)."""
    config = dict(config)
    target = config.pop("_target_", None)
    config.pop("_convert_", None)
    if target is not None and target not in DETECTOR_TARGETS:
        raise ValueError(
            f"{source}model._target_={target!r} was refused: the detector is this project's "
            f"FasterRCNN ({', '.join(sorted(DETECTOR_TARGETS))})"
        )
    refuse_code(config, "model", source=source)
    return FasterRCNN(**config)


def detector_from_checkpoint(checkpoint: dict, overrides: dict | None = None) -> FasterRCNN:
    """Rebuild the trained detector (weights loaded strictly); `overrides` as in `model_config`."""
    model = build_detector(model_config(checkpoint, overrides))
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


class InitialWeights(NamedTuple):
    """Weights to start training from (`init_weights`): `state` in this project's keys, the
    class of each predictor row (`source_names`, row 0 the background; None where the file does
    not say), the FrozenBatchNorm epsilon they were trained with (None: the config's), what
    they are, in words, and the `model` config they were trained with (a checkpoint of this
    project's; None: torchvision's `fasterrcnn_resnet50_fpn`)."""

    state: dict
    source_names: list[str] | tuple[str, ...] | None
    norm_eps: float | None
    what: str
    model: dict | None = None


def initial_weights(source: str) -> InitialWeights:
    """`init_weights`: "coco" (torchvision's COCO weights, downloaded), a checkpoint of this
    project (its weights, or their moving average where it was trained with `ema=on`; its
    saved config is read as data, never run) or a torchvision Faster R-CNN state dict file."""
    state = torchvision_coco_weights() if source == "coco" else read_file(source, "init_weights")
    if is_torchvision_state_dict(state):
        state = from_torchvision_keys(state)
        what = "torchvision's Faster R-CNN" + (" COCO weights" if source == "coco" else "")
        # torchvision runs its COCO weights with FrozenBatchNorm2d eps 0
        return InitialWeights(state, torchvision_class_names(state), 0.0, what)
    if isinstance(state, dict) and "state_dict" in state:
        checkpoint = checked(state, f"init_weights={source!r}")
        backbone = checkpoint["config"]["model"].get("backbone") or {}
        names = checkpoint.get("class_names")
        ema = " (their moving average)" if checkpoint.get("weights") == "ema" else ""
        return InitialWeights(
            detector_state(checkpoint),
            ["__background__", *names] if names else None,
            backbone.get("norm_eps") if backbone.get("norm") == "frozen_bn" else None,
            f"a checkpoint of this project, step {checkpoint.get('global_step', '?')}{ema}",
            checkpoint["config"]["model"],
        )
    raise ValueError(
        f"init_weights={source!r} is neither a checkpoint of this project (a .ckpt written by "
        "train.py) nor a torchvision Faster R-CNN state dict: init_weights takes those, or "
        "'coco' (torchvision's COCO weights). To go on with a run instead, use ckpt_path="
    )
