"""What every command does (train.py, eval.py, predict.py, visualize.py, export.py): build
everything from the Hydra config, run, summarise. The libraries they use (the model, data,
module, Predictor, figures, callbacks, export) do nothing on import and know nothing of
commands."""

import glob
import json
import logging
import math
import os
import re
from pathlib import Path

import lightning as L
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from PIL import Image
from tqdm import tqdm

from frcnn.checkpoint import detector_from_checkpoint, detector_state, load_checkpoint
from frcnn.checks import check_number
from frcnn.data.datamodule import StreamEpoch
from frcnn.data.sources import UNREADABLE_IMAGE
from frcnn.data.synthetic import draw_sample
from frcnn.drawing import draw_detections
from frcnn.figures import make_figure
from frcnn.model.convert import load_torchvision_weights, torchvision_state_dict
from frcnn.predict import Predictor, open_image
from frcnn.sweep import write_run_metrics

log = logging.getLogger(__name__)


def quiet_libraries() -> None:
    """faster-coco-eval prints its whole summary table at INFO level on every validation: the
    commands keep it to warnings (set here, when a command runs, not at import)."""
    logging.getLogger("faster_coco_eval").setLevel(logging.WARNING)


def build(cfg: DictConfig):
    """-> (datamodule, module, trainer), all from the config."""
    quiet_libraries()
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # fail now, not after the model is built, if the data is not there
    if cfg.get("init_weights"):
        # torchvision runs its COCO Faster R-CNN weights with FrozenBatchNorm2d eps 0; so does
        # this model (kept in the saved config, so eval and predict rebuild it the same way)
        cfg.model.backbone.norm_eps = 0.0
    model = instantiate(cfg.model)
    if cfg.get("init_weights"):
        left_out = load_torchvision_weights(model, torchvision_state_dict(cfg.init_weights))
        log.info("Weights from %s; left as initialised: %s", cfg.init_weights, left_out or "none")
    trainer = build_trainer(cfg)
    scale_learning_rate(cfg, trainer)
    module = instantiate(cfg.module)(
        model=model, class_names=datamodule.class_names, category_ids=datamodule.category_ids
    )
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    return datamodule, module, trainer


def scale_learning_rate(cfg: DictConfig, trainer: L.Trainer) -> None:
    """The linear scaling rule of torchvision's and MMDetection's recipes: `module.optimizer.lr`
    is the LR for a total batch of `lr_base_batch` images (16); the run's LR is scaled by its
    own total batch (per device x devices x accumulated batches). lr_base_batch=null: as given.
    """
    base = cfg.get("lr_base_batch")
    if not base:
        return
    check_number("lr_base_batch", base, 1, integer=True)
    batch = cfg.data.batch_size * trainer.world_size * trainer.accumulate_grad_batches
    base_lr = cfg.module.optimizer.lr
    cfg.module.optimizer.lr = base_lr * batch / base
    log.info(
        "Learning rate %g = %g x batch %d / %d (module.optimizer.lr is the LR for a batch of "
        "lr_base_batch images; lr_base_batch=null uses it as it is)",
        cfg.module.optimizer.lr,
        base_lr,
        batch,
        base,
    )


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """The Lightning Trainer with the config's callbacks and loggers (and `StreamEpoch`,
    which streamed data needs whatever the callbacks config says)."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    callbacks.append(StreamEpoch())
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values()]
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The last logged value of every validation and epoch-level training metric."""
    metrics = {}
    for name, value in sorted(trainer.callback_metrics.items()):
        if name.startswith(("val/", "train/")) and not name.endswith("_step"):
            metrics[name.removesuffix("_epoch")] = float(value)
    return metrics


def shown(path) -> str:
    """A path as a user would type it: relative to the working directory when inside it."""
    path = Path(path).absolute()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def summarise(trainer: L.Trainer, cfg: DictConfig, metrics: dict[str, float]) -> None:
    """Log hyperparameters with the final metrics, store them for sweeps, print a summary."""
    if trainer.is_global_zero:
        hparams = OmegaConf.to_container(cfg, resolve=True)
        hparams.pop("hydra", None)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(hparams, metrics={f"hp/{k}": v for k, v in metrics.items()})
        write_run_metrics(output_dir(), HydraConfig.get().overrides.task, metrics)

    lines = ["", f"{cfg.task_name} finished. Outputs: {shown(output_dir())}"]
    for checkpoint in trainer.checkpoint_callbacks:
        if checkpoint.monitor and checkpoint.best_model_path:
            best = checkpoint.best_model_score  # None when resumed into another folder
            score = "not validated in this run" if best is None else f"{float(best):.4f}"
            lines.append(
                f"  best checkpoint: {shown(checkpoint.best_model_path)} "
                f"({checkpoint.monitor}={score})"
            )
        elif checkpoint.best_model_path:
            lines.append(f"  last checkpoint: {shown(checkpoint.best_model_path)}")
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):  # the folder its events were written to
            lines.append(f"  TensorBoard:     tensorboard --logdir {shown(logger.log_dir)}")
    names = [k for k in metrics if k.startswith("val/") and "/ap/" not in k]
    width = max((len(k) for k in names), default=0)
    if any(k.startswith("subset/") for k in metrics):
        lines.append(f"  {'':<{width}}  {'whole':>7}  {'subset':>7}  (validation split)")
    for k in names:
        subset = metrics.get(f"subset/{k}")
        lines.append(
            f"  {k:<{width}}  {metrics[k]:7.4f}" + ("" if subset is None else f"  {subset:7.4f}")
        )
    log.info("\n".join(lines))


def train(cfg: DictConfig) -> float | None:
    """Fit the model; return the value of `cfg.optimized_metric` (for sweepers)."""
    datamodule, module, trainer = build(cfg)
    if cfg.get("ckpt_path"):
        check_resumable(module.model, load_checkpoint(cfg.ckpt_path), cfg)
    log.info("Output directory: %s", output_dir())
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    return finish(trainer, cfg, validate_best(trainer, module, datamodule))


def check_resumable(model, checkpoint: dict, cfg: DictConfig) -> None:
    """A checkpoint to resume from must hold this config's detector: else name the settings
    that differ (rather than a dump of mismatched tensor shapes)."""
    try:
        model.load_state_dict(detector_state(checkpoint))
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


def config_differences(a, b, prefix: str = ""):
    """(dotted key, value in a, value in b) for every leaf where two nested dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            yield from config_differences(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip("."), a, b


def validate_best(trainer: L.Trainer, module, datamodule) -> dict[str, float]:
    """The final figures of a run: its best checkpoint validated on the whole validation split.

    Training validates on a fixed subset where the data config sets one (`data.val.limit`);
    its last figures are kept beside the final ones as `subset/val/...`. Returns the training
    and final metrics.
    """
    metrics = final_metrics(trainer)
    best = next((c.best_model_path for c in trainer.checkpoint_callbacks if c.monitor), "")
    if not best:
        return metrics
    subset = datamodule.use_full_validation()
    log.info(
        "Validating the best checkpoint %s on the %s",
        shown(best),
        "whole validation split" if subset else "validation set",
    )
    # not on the training curves (it may be another set): the summary and hparams show it
    loggers, trainer.loggers = trainer.loggers, []
    # the weights alone: validate(ckpt_path=...) would also restore the callbacks' state of
    # that moment (the summary would lose a last.ckpt written after it)
    module.load_state_dict(load_checkpoint(best)["state_dict"])
    trainer.validate(module, datamodule=datamodule)
    trainer.loggers = loggers
    final = {k: v for k, v in final_metrics(trainer).items() if k.startswith("val/")}
    if subset:
        final |= {f"subset/{k}": v for k, v in metrics.items() if k.startswith("val/")}
    return {k: v for k, v in metrics.items() if not k.startswith("val/")} | final


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
    if not any(o.startswith("data.val.limit=") for o in overrides):
        datamodule.use_full_validation()  # not the training run's subset
    datamodule.setup("validate")
    model = detector_from_checkpoint(checkpoint, cfg.model)
    module = instantiate(cfg.module)(
        model=model,
        class_names=checkpoint.get("class_names"),
        category_ids=checkpoint.get("category_ids"),
    )
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    trainer = build_trainer(cfg)
    trainer.validate(module, datamodule=datamodule)
    return finish(trainer, cfg)


def checkpoint_run_config(cfg: DictConfig, saved: dict, overrides: list[str]) -> DictConfig:
    """`cfg` with `data` and `model` replaced by the checkpoint's own `saved` settings, except
    what the command line (`overrides`) sets under `data.` / `model.` or as `data=<option>`."""
    given = OverridesParser.create().parse_overrides(overrides)
    data = OmegaConf.create(saved["data"])
    model = OmegaConf.create(saved["model"])
    for override in given:
        key = override.key_or_group
        if key == "data" and not override.is_delete():  # another data config altogether
            data = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    for override in given:
        key = override.key_or_group
        root, _, rest = key.partition(".")
        if root in ("data", "model") and rest:
            value = OmegaConf.select(cfg, key)
            if isinstance(value, DictConfig | ListConfig):
                value = OmegaConf.to_container(value, resolve=True)
            OmegaConf.update(data if root == "data" else model, rest, value, force_add=True)
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.data, cfg.model = data, model
    return cfg


def finish(trainer: L.Trainer, cfg: DictConfig, metrics: dict | None = None) -> float | None:
    """Summarise the run (its final `metrics`, by default the last logged ones); return the
    optimised metric, None where there is none."""
    metrics = final_metrics(trainer) if metrics is None else metrics
    summarise(trainer, cfg, metrics)
    value = metrics.get(cfg.optimized_metric)
    return None if value is None or math.isnan(value) else value


# predict.py

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def find_images(spec: str) -> list[Path]:
    """An image file, a folder (its images, sorted) or a glob pattern -> image paths."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
        files = [p for p in files if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise FileNotFoundError(f"input={spec!r}: no image file, folder of images or glob match")
    return files


def image_ids(files: list[Path]) -> list[int]:
    """One unique id per file: COCO's file names are their image ids (000000397133.jpg ->
    397133); a file with another name, or whose number another file already has, gets the next
    id above all of those."""
    numbers = [int(p.stem) if p.stem.isascii() and p.stem.isdigit() else None for p in files]
    taken, ids = set(), []
    next_free = max((n for n in numbers if n is not None), default=-1) + 1
    for number in numbers:
        if number is None or number in taken:
            number, next_free = next_free, next_free + 1
        taken.add(number)
        ids.append(number)
    return ids


def output_names(files: list[Path]) -> list[str]:
    """A distinct, safe file name for each input's annotated copy: its stem, with characters
    that file systems or PIL choke on replaced, and a number where two would clash."""
    names, seen = [], set()
    for index, path in enumerate(files):
        stem = re.sub(r"[^\w\-]+", "_", path.stem).strip("_") or f"image{index}"
        name, n = stem, 0
        while name in seen:  # "a", "a_1", "a_2", ... (also past a file that is named "a_1")
            n += 1
            name = f"{stem}_{n}"
        seen.add(name)
        names.append(f"{name}.jpg")
    return names


def predict_files(cfg) -> dict:
    """predict.py: annotated images and detections.json for every readable input image.

    Unreadable files are skipped and listed at the end; an input file is never written over
    (an output folder that holds inputs is refused). detections.json keeps every detection
    (down to the checkpoint's score threshold, for COCOeval); the pictures draw those scoring
    at least `draw_thresh`. Returns a small report.
    """
    files = find_images(cfg.input)
    output = Path(cfg.output).expanduser().resolve()
    if any(path.resolve().parent == output for path in files):
        raise ValueError(
            f"output={cfg.output!r} holds input images, which the annotated copies would "
            "overwrite: choose another output folder"
        )
    predictor = Predictor.from_checkpoint(
        cfg.ckpt_path, cfg.trainer.accelerator, cfg.score_thresh, cfg.nms_thresh, cfg.max_detections
    )
    output.mkdir(parents=True, exist_ok=True)
    results, corrupt = [], []
    ids, names = image_ids(files), output_names(files)
    json_path = output / "detections.json"
    try:
        with tqdm(total=len(files), unit="image", desc="predict") as progress:
            for start in range(0, len(files), cfg.batch_size):
                batch = []
                for index in range(start, min(start + cfg.batch_size, len(files))):
                    try:
                        batch.append((index, open_image(files[index])))
                    except UNREADABLE_IMAGE as err:
                        corrupt.append(f"{files[index]}: {type(err).__name__}: {err}")
                detections = predictor([image for _, image in batch]) if batch else []
                for (index, image), detection in zip(batch, detections, strict=True):
                    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)
                    drawn = draw_detections(
                        pixels,
                        detection,
                        class_names=predictor.class_names,
                        min_score=cfg.draw_thresh,
                    )
                    Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(
                        output / names[index], format="JPEG", quality=92
                    )
                    results += predictor.coco_results(detection, ids[index], files[index].name)
                progress.update(min(cfg.batch_size, len(files) - start))
    finally:  # what was found so far is kept, whatever stopped the run
        json_path.write_text(json.dumps(results))
    lines = [
        f"{len(files) - len(corrupt)} images, {len(results)} detections -> {output}",
        f"  COCO results: {json_path}",
    ]
    if corrupt:
        lines.append(f"  {len(corrupt)} files could not be read and were skipped:")
        lines += [f"    {c}" for c in corrupt]
    log.info("\n".join(lines))
    return {"images": len(files) - len(corrupt), "detections": len(results), "corrupt": corrupt}


# visualize.py


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


# export.py

CHECK_IMAGES = 4


def export(cfg) -> Path:
    """export.py: the checkpoint's detector as an ONNX file, then the onnxruntime check (the
    same detections as PyTorch on `cfg.check_images`, batch 1 and 4). Returns the file."""
    from frcnn import export as onnx_export  # the `export` extra: not needed by other commands

    opset = onnx_export.check_opset(cfg.opset)
    output = writable_file(cfg.output)
    predictor = Predictor.from_checkpoint(
        cfg.ckpt_path, "cpu", cfg.score_thresh, cfg.nms_thresh, cfg.max_detections
    )
    size, resize = predictor.transform.size, predictor.transform.resize
    info = onnx_export.metadata(size, resize, predictor.class_names, predictor.category_ids)
    log.info("Exporting to ONNX (opset %d, %d px input)...", opset, size)
    onnx_export.export_onnx(predictor.model, output, size, opset, info)

    if cfg.check_images:
        images = [open_image(path) for path in find_images(cfg.check_images)[:CHECK_IMAGES]]
    else:
        num_classes = min(predictor.model.roi_heads.num_classes, 24)
        images = [draw_sample(0, i, num_classes, 240, 640).image for i in range(CHECK_IMAGES)]
    batch, sizes, _ = predictor.batch(images)
    reports = onnx_export.check(output, predictor.model, batch, sizes)
    lines = [f"onnxruntime (CPU) against PyTorch on {len(images)} images:"]
    for r in reports:
        verdict = "same" if r["ok"] else "DIFFERENT"
        lines.append(
            f"  batch {r['batch']}, image {r['image']}: {r['count']} detections "
            f"(PyTorch {r['expected']}), boxes within {r['box_diff']:.1e} px, scores within "
            f"{r['score_diff']:.1e}: {verdict}"
        )
    megabytes = output.stat().st_size / 2**20
    lines.append(f"Wrote {output} ({megabytes:.1f} MB)")
    lines.append(
        f"  inputs:  images uint8 (B, 3, {size}, {size}) {resize}ed, image_sizes int64 (B, 2)"
    )
    lines.append(
        "  outputs: boxes (B, K, 4), scores (B, K), labels (B, K), num_detections (B,); "
        f"K = {predictor.model.roi_heads.detections_per_img}"
    )
    log.info("\n".join(lines))
    if not all(r["ok"] for r in reports):
        raise RuntimeError(
            f"{output}: onnxruntime's detections differ from PyTorch's beyond "
            f"{onnx_export.BOX_TOLERANCE_PX} px / {onnx_export.SCORE_TOLERANCE} (see above)"
        )
    return output


def writable_file(spec: str) -> Path:
    """The path of a file to write, its folder created; a clear error where it cannot be."""
    path = Path(spec).expanduser()
    if path.is_dir():
        raise IsADirectoryError(f"output={spec!r} is a folder: give the file to write")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(
            f"output={spec!r}: its folder {str(path.parent)!r} cannot be created ({err})"
        ) from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise PermissionError(f"output={spec!r}: no permission to write there")
    return path
