"""frcnn: a readable Faster R-CNN. From Python: `frcnn.fit(datamodule, *overrides)` trains on
torch Datasets (`frcnn.data.DetectionDataModule.from_datasets`) as train.py trains.

The packages, in data-flow order: `structures` and `boxes` (shared), `data`, `model`,
`training`, `evaluation`, `inference`, `visualization`, and `app` (one module per command)."""

import importlib
import importlib.abc
import importlib.util
import sys

# modules of the flat layout before the packages (2026-12), by their new names: configs,
# checkpoints and scripts of that time name them (`_target_: frcnn.callbacks.WeightEMA`)
MOVED = {
    "frcnn.callbacks": "frcnn.training.callbacks",
    "frcnn.checkpoint": "frcnn.training.checkpoint",
    "frcnn.coco": "frcnn.data.coco_classes",
    "frcnn.confusion": "frcnn.evaluation.confusion",
    "frcnn.dataset_stats": "frcnn.evaluation.dataset_stats",
    "frcnn.drawing": "frcnn.visualization.drawing",
    "frcnn.eval_report": "frcnn.evaluation.report",
    "frcnn.export": "frcnn.inference.onnx_graph",
    "frcnn.figures": "frcnn.visualization.inspection",
    "frcnn.lr_schedule": "frcnn.training.lr_schedule",
    "frcnn.model.structures": "frcnn.structures",
    "frcnn.module": "frcnn.training.module",
    "frcnn.predict": "frcnn.inference.predictor",
    "frcnn.sweep": "frcnn.training.sweep",
    "frcnn.tide": "frcnn.evaluation.tide",
}
# names that left their module when it moved
MOVED_NAMES = {
    ("frcnn.callbacks", "DetectionImages"): "frcnn.visualization.tensorboard",
    ("frcnn.callbacks", "InspectionFigures"): "frcnn.visualization.tensorboard",
    ("frcnn.sweep", "markdown_table"): "frcnn.evaluation.tables",
    ("frcnn.figures", "DPI"): "frcnn.visualization.canvas",
}


class OldNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as a copy of its new module's namespace, with the names that
    moved elsewhere added (the classes and functions are the same objects)."""

    def find_spec(self, name, path, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return None  # a new module object, filled in below

    def exec_module(self, module) -> None:
        new = importlib.import_module(MOVED[module.__name__])
        module.__dict__.update({k: v for k, v in vars(new).items() if not k.startswith("__")})
        for (old, name), where in MOVED_NAMES.items():
            if old == module.__name__:
                setattr(module, name, getattr(importlib.import_module(where), name))


sys.meta_path.append(OldNames())


def fit(datamodule, *overrides: str) -> float | None:
    """`frcnn.app.fit.fit` (imported when called: `import frcnn` stays light)."""
    from frcnn.app.fit import fit as run

    return run(datamodule, *overrides)
