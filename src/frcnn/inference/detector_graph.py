"""The computation every exported format holds, and the check that an exported file computes it.

One graph for every runtime (ONNX, AOTInductor): the detector's own fixed-shape inference code
(`FasterRCNN.detect`) from uint8 images to padded detections. `check` runs an exported file on
images and compares its detections with the PyTorch model's, whatever runs the file;
`noise_check`, PyTorch against itself with its weights moved by one part in a million, tells
where float32's rounding alone can make them differ.
"""

import copy
import json
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

INPUTS = ("images", "image_sizes")
OUTPUTS = ("boxes", "scores", "labels", "num_detections")
# what the check accepts: the same detections, up to float32 rounding of two runtimes. Box
# coordinates within 0.01 px + 1e-4 of the input's side (0.05 px at 400 px, 0.09 at 800),
# scores within 3e-4: measured, PyTorch against itself with every weight scaled by 1 + 1e-6
# noise (as kernels that sum in another order do) moves a ResNet-50-FPN's boxes at 800 px by up
# to 0.028 px and its scores by up to 1.3e-4 (bench/README.md)
BOX_TOLERANCE_PX, BOX_TOLERANCE_PER_PX, SCORE_TOLERANCE = 1e-2, 1e-4, 3e-4


def box_tolerance(size: int) -> float:
    """The largest box coordinate difference (px) the check accepts at an input of `size` px."""
    return BOX_TOLERANCE_PX + BOX_TOLERANCE_PER_PX * size


# an exported file run on a batch: (images, image_sizes) -> {output name: array}
Runner = Callable[[Tensor, Tensor], dict[str, np.ndarray]]


@contextmanager
def reading(path: Path, runtime: str):
    """Around a runtime's reading of an exported file: whatever it raises for a file it cannot
    read (each its own kind: onnxruntime's InvalidArgument, torch's RuntimeError, ...) becomes
    a ValueError naming the file."""
    try:
        yield
    except Exception as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[-1]
        raise ValueError(
            f"model_file={str(path)!r} cannot be read by {runtime} ({reason}): is it a file "
            "export.py wrote, whole?"
        ) from None


class DetectorGraph(nn.Module):
    """The computation an exported file holds.

    images: uint8 (B, 3, S, S), letterboxed (content top-left, padding right and bottom);
    image_sizes: int64 (B, 2) (height, width) of each image's content in input pixels.
    Returns boxes (B, K, 4) float32 xyxy in input pixels, scores (B, K) float32, labels (B, K)
    int64 in 1..C and num_detections (B,) int64: each image's detections are its first
    num_detections rows, best first; the rows after them are zeros (label 0).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        # in eval mode from the start: the ONNX exporter puts the wrapper back in the mode it
        # found it in, and with it the user's model (left training after an export otherwise)
        self.eval()

    def forward(self, images: Tensor, image_sizes: Tensor):
        detections = self.model.detect(images, image_sizes)
        return (
            detections.boxes,
            detections.scores,
            detections.labels,
            detections.valid.sum(1),
        )


def example_inputs(image_size: int) -> tuple[Tensor, Tensor]:
    """A batch of 2 blank images (not 1: the exporters would take a batch of 1 for a constant)."""
    images = torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8)
    return images, torch.full((2, 2), image_size, dtype=torch.int64)


def metadata(image_size: int, resize: str, class_names, category_ids) -> dict[str, str]:
    """What a deployment needs besides the graph, as strings (ONNX metadata_props, the .pt2
    package's metadata)."""
    return {
        "image_size": str(image_size),
        "resize": resize,
        "class_names": json.dumps(list(class_names or [])),
        "category_ids": json.dumps(list(category_ids or [])),
        "outputs": "boxes (B,K,4) xyxy input pixels; scores (B,K); labels (B,K) 1..C, 0 on "
        "padding; num_detections (B,): the first num_detections rows of each image are valid",
    }


def compare(expected: dict[str, Tensor], actual: dict[str, np.ndarray], size: int) -> dict:
    """PyTorch's detections of one image {"boxes", "scores", "labels"} against the exported
    file's rows of that image, boxes in the pixels of an image of side `size` -> {"count" (the
    file's), "expected" (PyTorch), "same_count", "box_diff" (px), "score_diff", "ok" (the same
    count, within `box_tolerance(size)` and SCORE_TOLERANCE)}.

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
        and report["box_diff"] <= box_tolerance(size)
        and report["score_diff"] <= SCORE_TOLERANCE
    )
    return report


def reference(model: nn.Module, images: Tensor, image_sizes: Tensor) -> dict[int, list[dict]]:
    """The PyTorch model's detections that `check` compares with: {batch size: one dict per
    image} for a batch of all `images` and the first alone."""
    model = model.eval().cpu()
    with torch.no_grad():
        return {n: model(images[:n], image_sizes=image_sizes[:n]) for n in sorted({1, len(images)})}


def check(
    run: Runner, model: nn.Module, images: Tensor, image_sizes: Tensor, expected=None
) -> list[dict]:
    """Run an exported file (`run`) on a batch of all `images` and on the first alone; compare
    each image's detections with the PyTorch model's (`expected`: its `reference`, computed
    here where not given). -> one report per image and batch size (`compare`'s keys plus
    "batch" and "image")."""
    expected = expected or reference(model, images, image_sizes)
    reports = []
    for count, detected in expected.items():
        actual = run(images[:count], image_sizes[:count])
        for i, detections in enumerate(detected):
            image = {name: values[i] for name, values in actual.items()}
            report = compare(detections, image, images.shape[-1])
            reports.append({"batch": count, "image": i, **report})
    return reports


def with_float32_noise(model: nn.Module, seed: int) -> nn.Module:
    """A copy of `model` with every weight scaled by 1 + 1e-6 x N(0, 1) (`seed`'s draw): moved
    as much as kernels that sum in another order move results, float32's own noise."""
    noisy = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in noisy.parameters():
            weight.mul_(1 + 1e-6 * torch.randn(weight.shape, generator=generator))
    return noisy


def noise_check(
    model: nn.Module, images: Tensor, image_sizes: Tensor, seed: int, expected=None
) -> list[dict]:
    """`check` of PyTorch against itself `with_float32_noise` (draw `seed`; `expected`: the
    model's `reference`, for several draws computed once): one report per image and batch
    size. Where one fails, a decision on that image (a cut of the RPN or of the box head) lies
    within float32's rounding: any runtime may take it either way."""
    graph = DetectorGraph(with_float32_noise(model, seed))

    def run(images, image_sizes):
        with torch.no_grad():
            outputs = graph(images, image_sizes)
        return {name: value.numpy() for name, value in zip(OUTPUTS, outputs, strict=True)}

    return check(run, model, images, image_sizes, expected)
