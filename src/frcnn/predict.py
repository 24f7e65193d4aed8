"""Run a trained detector on images of any size: boxes come back in the images' own pixels."""

import glob
import json
import logging
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor, nn
from tqdm import tqdm

from frcnn.boxes import content_sizes, to_original_pixels
from frcnn.checkpoint import detector_from_checkpoint, load_checkpoint
from frcnn.data.sources import UNREADABLE_IMAGE
from frcnn.data.transforms import Record, Transform
from frcnn.drawing import draw_detections

log = logging.getLogger(__name__)

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


def resolve_device(device: str) -> torch.device:
    """ "auto", "cpu", "gpu" (Lightning's accelerator names) or a torch device string."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda" if device == "gpu" else device)


class Predictor:
    """A detector with its input settings: `Predictor.from_checkpoint(path)(image)`.

    Images may be file paths, PIL images, (H, W, 3) uint8 arrays or (3, H, W) uint8 tensors, of
    any size; they are resized as in training. Returns, per image, {"boxes" (D, 4) xyxy in the
    image's own pixels, "scores" (D,), "labels" (D,) in 1..C, "names" [D]}.
    """

    def __init__(
        self,
        model: nn.Module,
        image_size: int,
        resize: str = "letterbox",
        class_names: list[str] | None = None,
        category_ids: list[int] | None = None,
        device: str = "auto",
    ):
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.transform = Transform(image_size, resize, 0.0)
        self.class_names = class_names
        self.category_ids = category_ids

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "auto",
        score_thresh: float | None = None,
        nms_thresh: float | None = None,
        max_detections: int | None = None,
    ) -> "Predictor":
        """Rebuild the model from the config saved in a training checkpoint."""
        checkpoint = load_checkpoint(path)
        post = {
            "score_thresh": score_thresh,
            "nms_thresh": nms_thresh,
            "detections_per_img": max_detections,
        }
        post = {k: v for k, v in post.items() if v is not None}
        model = detector_from_checkpoint(checkpoint, {"roi_heads": post})
        data = checkpoint["config"]["data"]
        return cls(
            model,
            data["image_size"],
            data.get("resize", "letterbox"),
            checkpoint.get("class_names"),
            checkpoint.get("category_ids"),
            device,
        )

    def name(self, label: int) -> str:
        return self.class_names[label - 1] if self.class_names else str(label)

    def prepare(self, image) -> tuple[Tensor, dict]:
        """One image -> uint8 (3, S, S) input and its target dict (scale_xy, orig_size)."""
        if isinstance(image, (str, Path)):
            image = open_image(Path(image))
        elif isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        elif isinstance(image, Tensor):
            image = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
        return self.transform(Record(image, np.zeros((0, 4)), np.zeros(0), 0))

    @torch.no_grad()
    def __call__(self, images):
        single = not isinstance(images, (list, tuple))
        prepared = [self.prepare(image) for image in ([images] if single else images)]
        batch = torch.stack([p[0] for p in prepared]).to(self.device)
        sizes = content_sizes([p[1] for p in prepared]).to(self.device)
        results = []
        for det, (_, target) in zip(self.model(batch, image_sizes=sizes), prepared, strict=True):
            boxes = to_original_pixels(det["boxes"].cpu(), target["scale_xy"], target["orig_size"])
            labels = det["labels"].cpu()
            results.append(
                {
                    "boxes": boxes,
                    "scores": det["scores"].cpu(),
                    "labels": labels,
                    "names": [self.name(int(c)) for c in labels],
                }
            )
        return results[0] if single else results

    def coco_results(self, detection: dict, image_id: int, file_name: str) -> list[dict]:
        """Detections of one image in COCO results format (bbox xywh, category ids)."""
        out = []
        for box, score, label in zip(
            detection["boxes"].tolist(),
            detection["scores"].tolist(),
            detection["labels"].tolist(),
            strict=True,
        ):
            x0, y0, x1, y1 = box
            category = self.category_ids[label - 1] if self.category_ids else label
            out.append(
                {
                    "image_id": image_id,
                    "file_name": file_name,
                    "category_id": int(category),
                    "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                    "score": round(score, 5),
                }
            )
        return out


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
        name = stem if stem not in seen else f"{stem}_{index}"
        seen.add(name)
        names.append(f"{name}.jpg")
    return names


def open_image(path: Path) -> Image.Image:
    """An RGB image, turned upright as its EXIF orientation says (phone photos)."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


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
