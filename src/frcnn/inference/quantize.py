"""INT8 on the CPU: post-training static quantization of the ONNX graph, and the mAP it costs.

onnxruntime's `quantize_static` puts QuantizeLinear/DequantizeLinear pairs (QDQ) around every
convolution and fully connected layer: weights int8 per output channel, activations uint8 with
ranges calibrated (min/max) on images the model was trained on. onnxruntime runs those layers
in int8 (VNNI/AMX where the CPU has them); OpenVINO reads the same QDQ graph as its own int8
model. NMS, RoIAlign and the box arithmetic stay float32. What it costs is measured, not
assumed: `mean_ap` of the float and int8 files on the same validation images.

Needs the `export` extra (onnxruntime).
"""

import logging
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]


def quantize_int8(
    float_path: Path, int8_path: Path, calibration: Iterable[tuple[Tensor, Tensor]]
) -> None:
    """The ONNX graph at `float_path`, its convolutions and linear layers quantized to int8
    (QDQ), at `int8_path`; ranges calibrated on the batches (images uint8 (B, 3, S, S),
    image_sizes (B, 2)) of `calibration`, whose every layer's outputs the calibrator holds in
    memory at once. The metadata is kept."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch[0].numpy(),
                                               "image_sizes": batch[1].numpy()}  # fmt: skip

    with quiet_root_logger():
        quantize_static(
            str(float_path),
            str(int8_path),
            Batches(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )  # (not CalibMaxIntermediateOutputs, which bounds the memory the calibrator holds: in
        # onnxruntime 1.31 it drops the batches it held instead of folding them into the ranges)
    # quantize_static writes a new model: the float file's metadata goes along
    source, quantized = onnx.load(str(float_path)), onnx.load(str(int8_path))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(source.metadata_props)
    onnx.save(quantized, str(int8_path))


@contextmanager
def quiet_root_logger():
    """onnxruntime's quantization warns through the root logger: its advice to pre-process (the
    exporter's graph has its shapes already) and one line per convolution whose bias is not a
    constant of the graph (the RPN head's). Silenced; and where the root logger has no handler
    yet, `logging.warning` would install one on the stream of the moment (`basicConfig`) for
    the rest of the process: a handler that does nothing stands in meanwhile."""
    stand_in = logging.NullHandler()
    root, disabled = logging.getLogger(), logging.root.manager.disable
    root.addHandler(stand_in)
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(disabled)
        root.removeHandler(stand_in)


def mean_ap(
    detectors: dict[str, Callable[[Tensor, Tensor], list[dict[str, Tensor]]]],
    batches: Iterable[dict],
) -> dict[str, dict[str, float]]:
    """COCO mAP of detectors called as the model is, `(images, image_sizes=...) -> one dict
    per image` (the model itself, or an exported file's runner through `per_image`), on
    the same validation batches (DESIGN.md's batch: "images", "image_sizes", "targets" with
    boxes in input pixels) -> {name: {"map", "map_50", "images"}}."""
    from torchmetrics.detection import MeanAveragePrecision

    metrics = {name: MeanAveragePrecision(backend="faster_coco_eval") for name in detectors}
    images = 0
    for batch in batches:
        images += len(batch["images"])
        truth = [{"boxes": t["boxes"], "labels": t["labels"]} for t in batch["targets"]]
        for name, detect in detectors.items():
            with torch.no_grad():
                found = detect(batch["images"], image_sizes=batch["image_sizes"])
            metrics[name].update(found, truth)
    results = {}
    for name, metric in metrics.items():
        computed = metric.compute()
        results[name] = {key: float(computed[key]) for key in ("map", "map_50")}
        results[name]["images"] = images
    return results
