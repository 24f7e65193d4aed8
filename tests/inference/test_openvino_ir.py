"""OpenVINO IR conversion (`frcnn.inference.openvino_ir`) on a graph of one operation."""

from pathlib import Path

import numpy as np
import pytest

from frcnn.inference import openvino_ir


def relu_onnx(path: Path) -> None:
    """An ONNX file of y = relu(x), x float (2, 3)."""
    onnx = pytest.importorskip("onnx")
    helper = onnx.helper
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_conversion_sends_no_telemetry_and_keeps_the_metadata(tmp_path, monkeypatch):
    """A user who never opted in or out (no consent file in their home) and is not on a CI
    machine: OpenVINO's converter would send its events; the export's sends none."""
    openvino = pytest.importorskip("openvino")
    from openvino_telemetry import Telemetry
    from openvino_telemetry.backend import backend_ga4

    sent = []
    monkeypatch.setattr(backend_ga4.GA4Backend, "send", lambda self, message: sent.append(message))
    monkeypatch.setenv("HOME", str(tmp_path))
    for variable in ("CI", "TF_BUILD", "JENKINS_URL"):  # openvino_telemetry's CI check
        monkeypatch.delenv(variable, raising=False)
    # a fresh singleton: one made earlier in this process would keep its earlier consent
    monkeypatch.setattr(Telemetry, "_SingletonMetaClass__single_instance", None)
    relu_onnx(tmp_path / "relu.onnx")
    openvino_ir.convert(tmp_path / "relu.onnx", tmp_path / "relu.xml", {"image_size": "64"})
    assert sent == []
    model = openvino.Core().read_model(str(tmp_path / "relu.xml"))
    assert model.get_rt_info()[openvino_ir.SECTION]["image_size"].astype(str) == "64"
    compiled = openvino.compile_model(model, "CPU")
    x = np.array([[-1, 0, 2], [3, -4, 5]], np.float32)
    np.testing.assert_array_equal(compiled({"x": x})[0], np.maximum(x, 0))
