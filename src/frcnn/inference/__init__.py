"""Inference: a checkpoint run on images of any size (`predictor.Predictor`) and the exported
ONNX graph with its runtime check (`onnx_graph`)."""

from frcnn.inference.predictor import Predictor

__all__ = ["Predictor"]
