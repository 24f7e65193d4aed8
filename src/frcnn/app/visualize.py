"""visualize.py: one picture of what a stage of the detector does."""

import itertools
import logging
from collections.abc import Sized
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch import Tensor
from torch.utils.data import IterableDataset
from tqdm import tqdm

from frcnn.app.build import check_seed, checkpoint_run_config, classes_from_data
from frcnn.app.predict import output_folder
from frcnn.boxes import content_sizes
from frcnn.checks import check_number, path_of
from frcnn.data.sources import UNREADABLE_IMAGE, first_samples, unreadable
from frcnn.evaluation.dataset_stats import dataset_statistics
from frcnn.evaluation.report import dataset_markdown
from frcnn.inference.predictor import Predictor
from frcnn.structures import counted
from frcnn.training.checkpoint import build_detector, detector_from_checkpoint, load_checkpoint
from frcnn.visualization.drawing import label_grid
from frcnn.visualization.inspection import make_figure
from frcnn.visualization.report_figures import dataset_figure

log = logging.getLogger(__name__)

LABEL_SAMPLES = 16  # what=labels: a 4 x 4 grid


def visualize(cfg: DictConfig) -> Path:
    """visualize.py: one PNG of `cfg.what` for a checkpoint (or random weights) and an image
    (or a validation sample of the data), SIZES[what] inches at `cfg.dpi`; what=dataset: the
    statistics of the validation set's boxes and the model's anchors. Returns its path.

    With a checkpoint, the detector and the data settings (image size, resize, the validation
    set) are the checkpoint's own, with what the command line sets under `model.` / `data.` (or
    `data=...`) on top, as in eval.py."""
    check_number("dpi", cfg.dpi, 1)
    check_seed(cfg.seed)  # (the streamed data sets' shuffle)
    if cfg.get("limit") is not None:  # (0 said the validation set had no readable image)
        check_number("limit", cfg.limit, 1, integer=True)
    output_folder(cfg.output)  # a file there, or no path, fails before the work
    class_names = category_ids = checkpoint = None
    if cfg.ckpt_path:  # its settings, data included: what=labels draws its training data
        checkpoint = load_checkpoint(cfg.ckpt_path)
        cfg = checkpoint_run_config(cfg, checkpoint["config"], HydraConfig.get().overrides.task)
    if cfg.what == "labels":
        return labels_picture(cfg)
    if checkpoint:
        model = detector_from_checkpoint(checkpoint, cfg.model)
        class_names, category_ids = checkpoint.get("class_names"), checkpoint.get("category_ids")
    else:
        if cfg.data.get("num_classes") is None:  # the data's own count (build.classes_from_data)
            datamodule = instantiate(cfg.data)
            datamodule.setup("validate")
            classes_from_data(cfg, datamodule)
        config = OmegaConf.to_container(cfg.model, resolve=True)
        model = build_detector({**config, "backbone": {**config["backbone"], "weights": None}}, "")
    predictor = Predictor(
        model,
        cfg.data.image_size,
        cfg.data.resize,
        class_names,
        category_ids,
        device=cfg.trainer.accelerator,
    )
    if cfg.what == "dataset":
        return data_statistics(cfg, predictor.model)
    if cfg.image:
        image, target = prepared_image(cfg.image, predictor)
        truth = None  # an image file has no ground truth
    else:
        datamodule = instantiate(cfg.data)
        datamodule.setup("validate")
        if class_names:  # the boxes named as the checkpoint names its classes (as in eval.py)
            datamodule.number_as(class_names, category_ids)
        image, target = sample(datamodule.val_set, cfg.index)
        truth = target = datamodule.relabel(target)
        predictor.class_names = predictor.class_names or datamodule.class_names
    size = content_sizes([target])[0]
    figure = make_figure(
        cfg.what, predictor.model, image, size, truth, predictor.class_names, cfg.level, cfg.top_n
    )
    output = output_folder(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{cfg.what}.png"
    figure.savefig(path, dpi=cfg.dpi)
    log.info("Wrote %s", path)
    return path


def prepared_image(setting, predictor: Predictor) -> tuple[Tensor, dict]:
    """The `image` setting's file as the model's input and its target (`Predictor.prepare`),
    refused where there is none or it is no image."""
    path = path_of("image", setting)
    if not path.is_file():
        what = "a folder: give one image of it" if path.is_dir() else "no such file"
        raise FileNotFoundError(f"image={setting!r}: {what}")
    try:
        return predictor.prepare(path)
    except UNREADABLE_IMAGE as err:
        raise ValueError(f"image={setting!r} cannot be read ({unreadable(err)})") from None


def labels_picture(cfg: DictConfig) -> Path:
    """what=labels: the first LABEL_SAMPLES training samples of the data config, as training
    sees them (after the transform: resized, flipped), with their boxes and class names:
    labels.png in `output`. A wrong box format or class list shows at a glance."""
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    samples = first_samples(datamodule.train_set, LABEL_SAMPLES)
    if not samples:
        raise ValueError("what=labels: the training set has no readable image")
    grid = label_grid(samples, datamodule.class_names)
    output = output_folder(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    path = output / "labels.png"
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(path)
    boxes = sum(len(target["boxes"]) for _, target in samples)
    shown = f"{counted(len(samples), 'training image')}, {counted(boxes, 'box', 'boxes')}"
    log.info("Wrote %s: %s", path, shown)
    return path


def data_statistics(cfg: DictConfig, model) -> Path:
    """what=dataset: the validation set's boxes (`limit` images, all by default) against the
    model's anchors and pooler: dataset.png and dataset.md in `output`."""
    datamodule = instantiate(cfg.data)
    datamodule.setup("validate")
    boxes, labels = validation_boxes(datamodule, cfg.limit)
    if not boxes:
        raise ValueError("what=dataset: the validation set has no readable image")
    stats = dataset_statistics(boxes, labels, model, cfg.data.image_size)
    names = datamodule.class_names or [str(i) for i in range(1, cfg.data.num_classes + 1)]
    output = output_folder(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    text = dataset_markdown(stats)
    (output / "dataset.md").write_text(text)
    path = output / "dataset.png"
    dataset_figure(stats, names).savefig(path, dpi=cfg.dpi)
    log.info("%s\nWrote %s and %s", text, path, output / "dataset.md")
    return path


def validation_boxes(datamodule, limit: int | None) -> tuple[list[Tensor], list[Tensor]]:
    """The boxes (N, 4) in input pixels and labels (N,) of the first `limit` readable
    validation images (all by default), loaded as validation loads them: its DataLoader, whose
    `data.num_workers` processes decode and resize the images (2,000 of 640 x 480 on a 2-core
    CPU: 40 s in one process, 18 s in 4), with a progress bar."""
    source = datamodule.val_set
    total = len(source) if isinstance(source, Sized) else None
    if limit is not None:
        total = limit if total is None else min(total, limit)
    boxes, labels = [], []
    with tqdm(total=total, unit="image", desc="what=dataset") as progress:
        for batch in datamodule.val_dataloader():
            if batch is None:  # none of its images could be read
                continue
            targets = batch["targets"][: None if limit is None else limit - len(boxes)]
            # copies: a worker's batch lives in shared memory, one file for each kept view
            boxes += [target["boxes"].clone() for target in targets]
            labels += [target["labels"].clone() for target in targets]
            progress.update(len(targets))
            if limit is not None and len(boxes) >= limit:
                break
    return boxes, labels


def sample(source, index: int):
    """Validation sample `index` of a source: indexed (a COCO folder, synthetic shapes) or
    streamed (the hub), where it is the index-th readable image of the stream."""
    check_number("index", index, 0, integer=True)
    if not isinstance(source, IterableDataset):
        if not 0 <= index < len(source):
            raise ValueError(f"index={index}: the validation set has {len(source)} images")
        return source[index]
    readable = (s for s in source if s is not None)
    found = next(itertools.islice(readable, index, None), None)
    if found is None:
        raise ValueError(f"index={index}: the validation stream has fewer readable images")
    return found
