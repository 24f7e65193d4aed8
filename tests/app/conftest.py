"""A trained run shared by the app tests."""

import pytest

from tests.app.helpers import TINY, run, run_dirs


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A two-epoch run on synthetic data with checkpoints and TensorBoard logs, validated and
    checkpointed with the weights' moving average (a short one, for so short a run)."""
    log_dir = tmp_path_factory.mktemp("logs")
    ema = ["ema=on", "ema.decay=0.8", "ema.warmup_steps=0"]
    run("train.py", "trainer.max_epochs=2", "callbacks=inspection", *ema, *TINY, log_dir=log_dir)
    return log_dir, run_dirs(log_dir)[0]
