"""INT8 post-training quantization of the ONNX graph: int8 layers, a quarter of the size, and
the mAP it costs measured against the float graph."""

import onnx
import pytest

from frcnn.data.transforms import collate
from frcnn.inference import onnx_graph, quantize
from frcnn.inference.detector_graph import metadata
from frcnn.inference.onnx_graph import export_onnx
from frcnn.inference.predictor import per_image
from tests.helpers import OVERFIT_SIZE


@pytest.fixture(scope="module")
def graphs(overfit_detector, tmp_path_factory):
    """The overfit detector as a float ONNX graph and quantized (calibrated on its 8 training
    images, in batches of 4) -> (float path, int8 path, the 8 images as one batch)."""
    model, data, _, _ = overfit_detector
    folder = tmp_path_factory.mktemp("int8")
    info = metadata(OVERFIT_SIZE, "letterbox", data.class_names, data.category_ids)
    export_onnx(model, folder / "float.onnx", OVERFIT_SIZE, 17, info)
    batch = collate([data[i] for i in range(len(data))])
    calibration = [(batch["images"][i : i + 4], batch["image_sizes"][i : i + 4]) for i in (0, 4)]
    quantize.quantize_int8(folder / "float.onnx", folder / "int8.onnx", calibration)
    return folder / "float.onnx", folder / "int8.onnx", batch, model


def test_the_int8_graph_quantizes_every_convolution_and_keeps_the_metadata(graphs):
    float_path, int8_path, _, _ = graphs
    model = onnx.load(str(int8_path))
    nodes = model.graph.node
    convolutions = [n for n in nodes if n.op_type == "Conv"]
    dequantized = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    assert convolutions and all(set(n.input[:2]) <= dequantized for n in convolutions)
    assert int8_path.stat().st_size < 0.35 * float_path.stat().st_size
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta == {p.key: p.value for p in onnx.load(str(float_path)).metadata_props}


def test_int8_costs_little_map(graphs):
    """On the 8 images the detector learned (float mAP@0.5 above 0.8): int8 within 0.05 mAP in
    onnxruntime. (OpenVINO runs the same QDQ graph in tests/app/test_export.py, in a process of
    its own: run in this one, it left pytest's captured stderr closed for later tests.)"""
    float_path, int8_path, batch, model = graphs
    runs = {"float32": float_path, "int8": int8_path}
    detectors = {name: per_image(onnx_graph.load(path)[0]) for name, path in runs.items()}
    found = quantize.mean_ap({"torch": model.eval(), **detectors}, [batch])
    assert found["float32"]["map_50"] > 0.8 and found["float32"]["images"] == 8
    # the model itself is measured as its exported graph (the same detections)
    assert found["torch"]["map"] == pytest.approx(found["float32"]["map"], abs=1e-3)
    assert found["float32"]["map"] - found["int8"]["map"] < 0.05, found
    assert found["int8"]["map"] != found["float32"]["map"]  # int8 is not the float graph
