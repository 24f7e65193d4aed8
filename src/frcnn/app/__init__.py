"""What every command does (train.py, eval.py, predict.py, visualize.py, export.py; `fit`, a
training run from Python): build everything from the Hydra config, run, summarise; one module
per command, the shared building in `build`. The libraries they use (the model, data, module,
Predictor, figures, callbacks, export) do nothing on import and know nothing of commands."""

from frcnn.app.build import build
from frcnn.app.command import command
from frcnn.app.evaluate import evaluate
from frcnn.app.export import export
from frcnn.app.predict import find_images, output_names, predict_files, predict_video
from frcnn.app.train import train
from frcnn.app.visualize import visualize

__all__ = [
    "build",
    "command",
    "evaluate",
    "export",
    "find_images",
    "output_names",
    "predict_files",
    "predict_video",
    "train",
    "visualize",
]
