"""Run a trained detector on images of any size: boxes come back in the images' own pixels."""

import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor, nn

from frcnn.boxes import content_sizes, to_original_pixels
from frcnn.checks import check_gpu, check_number, path_of
from frcnn.data.transforms import Record, Transform, array_image, to_rgb
from frcnn.model.tta import TTA
from frcnn.structures import class_name
from frcnn.training.checkpoint import detector_from_checkpoint, load_checkpoint

# predict.py's backends for an exported file: the module that loads it
EXPORTED_BACKENDS = {
    "onnxruntime": "frcnn.inference.onnx_graph",
    "openvino": "frcnn.inference.openvino_ir",
    "pt2": "frcnn.inference.pt2_package",
}
# the suffix of the files only one backend runs (export.py names them so; ONNX files any way)
EXPORTED_SUFFIXES = {".xml": "openvino", ".pt2": "pt2"}
EXPORTED_METADATA = ("image_size", "resize", "class_names", "category_ids")


def resolve_device(device: str | torch.device) -> torch.device:
    """ "auto", "cpu", "gpu" (Lightning's accelerator names), "cuda" / "cuda:N" or a
    torch.device; anything else is refused, named (torch's own error said only which device
    types it has)."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, str) or not re.fullmatch(r"cpu|gpu|cuda(:\d+)?", device):
        # (Apple's MPS has no float64, which the NMS needs, as for device=auto in training)
        raise ValueError(f"device={device!r}: one of auto, cpu, gpu, cuda or cuda:N")
    check_gpu("device", device)
    return torch.device("cuda" if device == "gpu" else device)


JPEG_START = b"\xff\xd8"  # a JPEG file's first bytes (its start-of-image marker)


def check_post_processing(score_thresh=None, nms_thresh=None, max_detections=None, tta=None):
    """The post-processing asked of a Predictor (None: the checkpoint's), checked before the
    model loads and named as given (`predict.py score_thresh=`, or the keyword): the model
    would name its own keys (`model.roi_heads.detections_per_img` for `max_detections`)."""
    if score_thresh is not None:
        check_number("score_thresh", score_thresh, 0, 1, open_high=True)
    if nms_thresh is not None:
        check_number("nms_thresh", nms_thresh, 0, 1, open_low=True)
    if max_detections is not None:
        check_number("max_detections", max_detections, 1, integer=True)
    if tta not in (None, *TTA):
        raise ValueError(f"tta={tta!r}: one of {', '.join(TTA)} (null: the checkpoint's)")


class Predictor:
    """A detector with its input settings: `Predictor.from_checkpoint(path)(image)`.

    Images may be file paths, PIL images, (H, W, 3) uint8 RGB arrays (OpenCV's BGR ones as
    `image[..., ::-1]`) or (3, H, W) uint8 tensors, of any size; they are resized as in
    training. Returns, per image, {"boxes" (D, 4) xyxy in the
    image's own pixels, "scores" (D,), "labels" (D,) in 1..C, "names" [D]}.
    """

    def __init__(
        self,
        model: nn.Module,
        image_size: int,
        resize: str = "letterbox",
        class_names: list[str] | None = None,
        category_ids: list[int] | None = None,
        device: str | torch.device = "auto",
    ):
        self.device = resolve_device(device)
        # an exported file's runner (`from_exported`) is called as the model is
        self.model = model.eval().to(self.device) if isinstance(model, nn.Module) else model
        self.transform = Transform(image_size, resize, 0.0)
        self.class_names = class_names
        self.category_ids = category_ids

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "auto",
        score_thresh: float | None = None,
        nms_thresh: float | None = None,
        max_detections: int | None = None,
        tta: str | None = None,
    ) -> "Predictor":
        """Rebuild the model from the config saved in a training checkpoint; post-processing
        and `tta` ("none" | "flip") as given, else the checkpoint's."""
        check_post_processing(score_thresh, nms_thresh, max_detections, tta)
        device = resolve_device(device)  # (before the checkpoint loads)
        checkpoint = load_checkpoint(path)
        post = {
            "score_thresh": score_thresh,
            "nms_thresh": nms_thresh,
            "detections_per_img": max_detections,
        }
        post = {k: v for k, v in post.items() if v is not None}
        overrides = {"roi_heads": post} | ({"tta": tta} if tta is not None else {})
        model = detector_from_checkpoint(checkpoint, overrides)
        data = checkpoint["config"]["data"]
        return cls(
            model,
            data["image_size"],
            data.get("resize", "letterbox"),
            checkpoint.get("class_names"),
            checkpoint.get("category_ids"),
            device,
        )

    @classmethod
    def from_exported(cls, path: str | Path, backend: str, max_detections: int | None = None):
        """An exported file (export.py), on the CPU: an ONNX file run by onnxruntime (`backend`
        "onnxruntime"), OpenVINO IR ("openvino", its .xml) or an AOTInductor package ("pt2").
        Its post-processing is the one baked in at export (`max_detections` keeps at most that
        many of each image's, best first); its input size, resize and class names come from
        its metadata."""
        if backend not in EXPORTED_BACKENDS:
            raise ValueError(
                f"backend={backend!r}: an exported file runs on {', '.join(EXPORTED_BACKENDS)}"
            )
        check_post_processing(max_detections=max_detections)
        path = path_of("model_file", path)
        if not path.is_file():
            raise FileNotFoundError(f"model_file={str(path)!r}: no such file (export.py writes it)")
        check_exported_suffix(path, backend)
        load = importlib.import_module(EXPORTED_BACKENDS[backend]).load
        run, meta = load(path)
        missing = [key for key in EXPORTED_METADATA if key not in meta]
        if missing:
            raise ValueError(
                f"model_file={str(path)!r} lacks the metadata export.py writes "
                f"({', '.join(missing)}): export the checkpoint with export.py"
            )
        return cls(
            per_image(run, max_detections),
            int(meta["image_size"]),
            meta["resize"],
            json.loads(meta["class_names"]) or None,
            json.loads(meta["category_ids"]) or None,
            "cpu",
        )

    def name(self, label: int) -> str:
        return class_name(label, self.class_names)

    def prepare(self, image) -> tuple[Tensor, dict]:
        """One image -> uint8 (3, S, S) input and its target dict (scale_xy, orig_size). A file
        (a path, or its bytes) is decoded as training decodes its images: upright (EXIF), and
        a large JPEG decoded smaller (`Transform.reduction`); a decoded image is taken as it
        is."""
        if isinstance(image, (str, Path)):
            if Path(image).is_dir():
                raise IsADirectoryError(
                    f"Predictor: {str(image)!r} is a folder: give its images (a list, or "
                    "Path(folder).glob('*.jpg')), or run predict.py input=<the folder>"
                )
            image = Path(image).read_bytes()
        elif not isinstance(image, (bytes, Image.Image)):
            image = array_image(image, "Predictor")
        return self.transform(Record(image, np.zeros((0, 4)), np.zeros(0), 0))

    def prepare_file(self, data: bytes, image: Image.Image) -> tuple[Tensor, dict]:
        """`prepare` for a file read once: its bytes and its image decoded whole (upright RGB,
        for its picture). From the bytes where it is a JPEG that decodes smaller, as training
        decodes it; else from the image, not decoded a second time."""
        smaller = data[:2] == JPEG_START and self.transform.reduction(*image.size) > 1
        return self.prepare(data if smaller else image)

    def batch(self, images: list) -> tuple[Tensor, Tensor, list[dict]]:
        """Images (as `prepare` takes them) -> the model's inputs on the CPU: uint8 (B, 3, S, S),
        content sizes (B, 2), and each image's target dict (scale_xy, orig_size)."""
        return stacked([self.prepare(image) for image in images])

    def __call__(self, images, batch_size: int = 8):
        """An image or a list or iterator of them (as `prepare` takes them) -> its detections,
        or theirs: {"boxes" (D, 4) xyxy in the image's own pixels, "scores" (D,), "labels"
        (D,), "names"}. A list goes through the model `batch_size` images at a time (a list
        of a thousand photos in one batch would need the activations of a thousand)."""
        check_number("batch_size", batch_size, 1, integer=True)
        single = not isinstance(images, (list, tuple, Iterator))
        images = [images] if single else list(images)  # (an iterator: Path.glob's files)
        results = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            results += self.detect([self.prepare(image) for image in chunk])
        return results[0] if single else results

    @torch.no_grad()
    def detect(self, prepared: list[tuple[Tensor, dict]]) -> list[dict]:
        """Images as `prepare` made them (elsewhere, e.g. in the threads that read them) ->
        their detections, as `__call__` returns them."""
        batch, sizes, targets = stacked(prepared)
        detections = self.model(batch.to(self.device), image_sizes=sizes.to(self.device))
        results = []
        for det, target in zip(detections, targets, strict=True):
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
        return results

    def coco_results(self, detection: dict, image_id: int, file_name: str) -> list[dict]:
        """Detections of one image in COCO results format (bbox xywh, the data set's category
        ids), each with its class name (`category_name`)."""
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
                    "category_name": self.name(label),
                    "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                    "score": round(score, 5),
                }
            )
        return out


def stacked(prepared: list[tuple[Tensor, dict]]) -> tuple[Tensor, Tensor, list[dict]]:
    """`Predictor.prepare`'s (input, target) pairs -> uint8 (B, 3, S, S), content sizes (B, 2),
    the targets."""
    targets = [target for _, target in prepared]
    return torch.stack([image for image, _ in prepared]), content_sizes(targets), targets


def per_image(run, max_detections: int | None = None):
    """An exported file's runner as the model is called: (images, image_sizes=...) -> one dict
    per image of its valid rows {"boxes", "scores", "labels"} (at most `max_detections`)."""

    def detect(images: Tensor, image_sizes: Tensor) -> list[dict[str, Tensor]]:
        outputs = {k: torch.from_numpy(v) for k, v in run(images, image_sizes).items()}
        counts = outputs["num_detections"].tolist()
        if max_detections is not None:
            counts = [min(count, max_detections) for count in counts]
        return [
            {k: outputs[k][i, :count] for k in ("boxes", "scores", "labels")}
            for i, count in enumerate(counts)
        ]

    return detect


def check_exported_suffix(path: Path, backend: str) -> None:
    """Refuse an exported file given to a backend that does not run it, by its suffix: an
    OpenVINO IR's .xml and an AOTInductor package's .pt2 (export.py's names)."""
    runs = EXPORTED_SUFFIXES.get(path.suffix.lower(), "onnxruntime")
    if runs != backend:
        suffix = {v: k for k, v in EXPORTED_SUFFIXES.items()}.get(backend, ".onnx")
        raise ValueError(
            f"model_file={str(path)!r} is run by backend={runs}; backend={backend} runs "
            f"export.py's {suffix} files"
        )


def open_image(file) -> Image.Image:
    """An image file (a path or a binary file object) -> RGB, turned upright as its EXIF
    orientation says (phone photos)."""
    with Image.open(file) as image:
        return to_rgb(ImageOps.exif_transpose(image))
