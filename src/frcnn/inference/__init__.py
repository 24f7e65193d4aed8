"""Inference: a checkpoint run on images of any size (`predictor.Predictor`), on tiles of large
images (`tiles`) and on video frames (`video`); the graph every exported format holds and its
check (`detector_graph`), as an ONNX file (`onnx_graph`), OpenVINO IR (`openvino_ir`) or an
AOTInductor package (`pt2_package`), and in int8 (`quantize`)."""

from frcnn.inference.predictor import Predictor

__all__ = ["Predictor"]
