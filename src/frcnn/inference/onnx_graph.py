"""ONNX export of a trained detector: the whole graph, uint8 images in, padded detections out.

The graph is `detector_graph.DetectorGraph` (the detector's own fixed-shape inference code),
traced with two exportable stand-ins that compute the same values: NMS as ONNX
`NonMaxSuppression` (`boxes.NMSInRows`) and RoIAlign as one ONNX `RoiAlign` per FPN level
(`poolers.roi_align_per_level`). A runtime needs nothing else. `load` runs the file with
onnxruntime (the export's check, predict.py backend=onnxruntime).

Needs the `export` extra (`onnx`, `onnxruntime`); training does not.
"""

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from frcnn.inference import detector_graph
from frcnn.inference.detector_graph import INPUTS, OUTPUTS, DetectorGraph, Runner, example_inputs

# ONNX RoiAlign without half-pixel offsets (torchvision's aligned=False) and NonMaxSuppression
# exist from opset 10; torchvision's RoIAlign exporter needs 11; 20 is the newest opset the
# TorchScript exporter writes
MIN_OPSET, MAX_OPSET = 11, 20


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
    batch = {0: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        # the TorchScript exporter is deprecated in favour of torch.export (format=pt2 takes
        # that road); torchvision's detectors export this way
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # tracing warns at every Python int taken from a shape: here all of them are fixed
        # by the input size, except the batch, which is kept symbolic
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            example_inputs(image_size),
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


def load(path: Path) -> tuple[Runner, dict[str, str]]:
    """The ONNX file in an onnxruntime session (CPU) -> (its runner: (images, image_sizes) ->
    outputs, the file's metadata)."""
    import onnxruntime

    with detector_graph.reading(path, "onnxruntime"):
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    run = lambda images, image_sizes: run_onnx(session, images, image_sizes)  # noqa: E731
    return run, session.get_modelmeta().custom_metadata_map


def run_onnx(session, images: Tensor, image_sizes: Tensor) -> dict[str, np.ndarray]:
    """One batch through an onnxruntime session -> {output name: array}."""
    outputs = session.run(
        list(OUTPUTS), {"images": images.numpy(), "image_sizes": image_sizes.numpy()}
    )
    return dict(zip(OUTPUTS, outputs, strict=True))
