"""The Python door: train on a data module made in Python as train.py trains on a config."""

import sys

import hydra
from omegaconf import DictConfig

from frcnn.app.command import PACKAGE_DIR, command
from frcnn.app.train import train
from frcnn.checks import override_value
from frcnn.data import DetectionDataModule

# train.py's config tree: the copy inside the package of an installed wheel, else a checkout's
CONFIG_DIR = PACKAGE_DIR / "conf"
if not CONFIG_DIR.is_dir():
    CONFIG_DIR = PACKAGE_DIR.parents[1] / "conf"


def fit(datamodule: DetectionDataModule, *overrides: str) -> float | None:
    """Train on `datamodule` (e.g. `DetectionDataModule.from_datasets(...)`) as `uv run
    train.py *overrides` trains on a data config: the same config tree, run folder, progress,
    checkpoints, summary and report. The data settings are the data module's, recorded in the
    run's config (`data=python`). The script's own command-line arguments are overrides too,
    after these (`uv run my_script.py trainer.max_epochs=5`, `... ckpt_path=<last.ckpt>` to
    resume). Returns the value of `optimized_metric`."""
    if not isinstance(datamodule, DetectionDataModule):
        raise TypeError(
            "fit: a DetectionDataModule (DetectionDataModule.from_datasets(train, val, "
            f"class_names=[...])); got {type(datamodule).__name__}"
        )
    if not all(isinstance(o, str) for o in overrides):
        wrong = next(o for o in overrides if not isinstance(o, str))
        raise TypeError(
            "fit: overrides are strings, one argument each (frcnn.fit(data, "
            f'"trainer.max_epochs=20", "seed=1")); got {wrong!r}'
        )
    data = ["data=python", "hydra.job.name=train"]  # its log: train.log, as train.py's
    data += [f"++data.{key}={override_value(value)}" for key, value in datamodule.settings.items()]
    argv = sys.argv
    given = [o for o in (*overrides, *argv[1:]) if o not in data and group(o) == "data"]
    own = [o for o in (*overrides, *data) if o not in argv[1:]]  # a DDP process has them already
    result = []

    def task(cfg: DictConfig) -> float | None:
        if given:
            raise ValueError(
                f"{given[0]!r}: the data's settings are the data module's own (e.g. "
                "DetectionDataModule.from_datasets(..., batch_size=4))"
            )
        result.append(train(cfg, datamodule))
        return result[-1]

    sys.argv = [argv[0], *own, *argv[1:]]
    try:
        hydra.main(str(CONFIG_DIR), "train", version_base="1.3")(command(task))()
    finally:
        sys.argv = argv
    return result[-1] if result else None


def group(override: str) -> str:
    """The top-level key an override sets: "data" for data=..., data.x=..., ++data.x=..."""
    return override.lstrip("+~").split("=")[0].split(".")[0]
