"""Inference: a checkpoint run on images of any size (`predictor.Predictor`); the graph every
exported format holds and its check (`detector_graph`), as an ONNX file (`onnx_graph`) or an
AOTInductor package (`pt2_package`)."""

from frcnn.inference.predictor import Predictor

__all__ = ["Predictor"]
