"""ONNX export of a trained detector: the whole graph, uint8 images in, padded detections out.

The graph is the detector's own inference code (`FasterRCNN.detect`, fixed shapes throughout),
traced with two exportable stand-ins that compute the same values: NMS as ONNX
`NonMaxSuppression` (`boxes.NMSInRows`) and RoIAlign as one ONNX `RoiAlign` per FPN level
(`poolers.roi_align_per_level`). A runtime needs nothing else. `check` runs the file with
onnxruntime and compares its detections with the PyTorch model's.

Needs the `export` extra (`onnx`, `onnxruntime`); training does not.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

INPUTS = ("images", "image_sizes")
OUTPUTS = ("boxes", "scores", "labels", "num_detections")
# ONNX RoiAlign without half-pixel offsets (torchvision's aligned=False) and NonMaxSuppression
# exist from opset 10; torchvision's RoIAlign exporter needs 11; 20 is the newest opset the
# TorchScript exporter writes
MIN_OPSET, MAX_OPSET = 11, 20
# what the check accepts: the same detections, up to float rounding of two runtimes
BOX_TOLERANCE_PX, SCORE_TOLERANCE = 1e-2, 1e-4


class DetectorGraph(nn.Module):
    """The computation the ONNX file holds.

    images: uint8 (B, 3, S, S), letterboxed (content top-left, padding right and bottom);
    image_sizes: int64 (B, 2) (height, width) of each image's content in input pixels.
    Returns boxes (B, K, 4) float32 xyxy in input pixels, scores (B, K) float32, labels (B, K)
    int64 in 1..C and num_detections (B,) int64: each image's detections are its first
    num_detections rows, best first; the rows after them are zeros (label 0).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, image_sizes: Tensor):
        detections = self.model.detect(images, image_sizes)
        return (
            detections.boxes,
            detections.scores,
            detections.labels,
            detections.valid.sum(1),
        )


def check_opset(opset) -> int:
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(
            f"opset={opset!r}: the graph needs ONNX opset {MIN_OPSET}..{MAX_OPSET} "
            f"(RoiAlign and NonMaxSuppression as torchvision exports them from {MIN_OPSET}; "
            f"{MAX_OPSET} is the newest the exporter writes)"
        )
    return opset


def export_onnx(
    model: nn.Module, path: Path, image_size: int, opset: int, metadata: dict[str, str]
) -> None:
    """Trace `model` (in eval mode, on the CPU) into an ONNX file at `path` with a dynamic
    batch dimension; `metadata` goes into the file's metadata_props (class names, ...)."""
    import onnx

    graph = DetectorGraph(model.eval().cpu())
    images = torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8)
    sizes = torch.full((2, 2), image_size, dtype=torch.int64)
    batch = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter is deprecated in favour of torch.export, which cannot yet
        # express NMS's data-dependent output size; torchvision's detectors export this way
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # tracing warns at every Python int taken from a shape: here all of them are fixed
        # by the input size, except the batch, which is kept symbolic
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            (images, sizes),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_axes={name: batch for name in INPUTS + OUTPUTS},
        )
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def metadata(image_size: int, resize: str, class_names, category_ids) -> dict[str, str]:
    """What a deployment needs besides the graph, as metadata_props strings."""
    return {
        "image_size": str(image_size),
        "resize": resize,
        "class_names": json.dumps(list(class_names or [])),
        "category_ids": json.dumps(list(category_ids or [])),
        "outputs": "boxes (B,K,4) xyxy input pixels; scores (B,K); labels (B,K) 1..C, 0 on "
        "padding; num_detections (B,): the first num_detections rows of each image are valid",
    }


def run_onnx(session, images: Tensor, image_sizes: Tensor) -> dict[str, np.ndarray]:
    """One batch through an onnxruntime session -> {output name: array}."""
    outputs = session.run(
        list(OUTPUTS), {"images": images.numpy(), "image_sizes": image_sizes.numpy()}
    )
    return dict(zip(OUTPUTS, outputs, strict=True))


def compare(expected: dict[str, Tensor], actual: dict[str, np.ndarray]) -> dict:
    """PyTorch's detections of one image {"boxes", "scores", "labels"} against the ONNX
    outputs' rows of that image -> {"count" (ONNX), "expected" (PyTorch), "same_count",
    "box_diff" (px), "score_diff", "ok"}.

    Rows are paired by label and nearest box (two runtimes may order near-equal scores
    differently); the differences are the largest over the pairs.
    """
    count = int(actual["num_detections"])
    boxes = torch.from_numpy(actual["boxes"][:count]).double()
    scores = torch.from_numpy(actual["scores"][:count]).double()
    labels = torch.from_numpy(actual["labels"][:count])
    report = {"count": count, "expected": len(expected["scores"])}
    report.update(same_count=count == report["expected"], box_diff=0.0, score_diff=0.0)
    if report["same_count"] and count:
        diff = (boxes[:, None] - expected["boxes"].double()[None]).abs().amax(-1)
        diff[labels[:, None] != expected["labels"][None]] = torch.inf
        unused = torch.ones(count, dtype=torch.bool)
        for row in range(count):
            pair = torch.where(unused, diff[row], torch.inf).argmin()
            unused[pair] = False
            report["box_diff"] = max(report["box_diff"], float(diff[row, pair]))
            score_diff = abs(float(scores[row] - expected["scores"][pair]))
            report["score_diff"] = max(report["score_diff"], score_diff)
    report["ok"] = (
        report["same_count"]
        and report["box_diff"] <= BOX_TOLERANCE_PX
        and report["score_diff"] <= SCORE_TOLERANCE
    )
    return report


def check(path: Path, model: nn.Module, images: Tensor, image_sizes: Tensor) -> list[dict]:
    """Run the ONNX file with onnxruntime (CPU) on a batch of all `images` and on the first
    alone; compare each image's detections with the PyTorch model's. -> one report per image
    and batch size (`compare`'s keys plus "batch" and "image")."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = model.eval().cpu()
    reports = []
    for count in sorted({1, len(images)}):
        batch, sizes = images[:count], image_sizes[:count]
        with torch.no_grad():
            expected = model(batch, image_sizes=sizes)
        actual = run_onnx(session, batch, sizes)
        for i, detections in enumerate(expected):
            image = {name: values[i] for name, values in actual.items()}
            reports.append({"batch": count, "image": i, **compare(detections, image)})
    return reports
