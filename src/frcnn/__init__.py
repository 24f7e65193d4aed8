"""frcnn: a readable Faster R-CNN. From Python: `frcnn.fit(datamodule, *overrides)` trains on
torch Datasets (`frcnn.data.DetectionDataModule.from_datasets`) as train.py trains."""


def fit(datamodule, *overrides: str) -> float | None:
    """`frcnn.app.fit.fit` (imported when called: `import frcnn` stays light)."""
    from frcnn.app.fit import fit as run

    return run(datamodule, *overrides)
