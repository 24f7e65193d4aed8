"""A trained run shared by the app tests."""

import pytest

from tests.app.helpers import TINY, run, run_dirs


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A two-epoch run on synthetic data with checkpoints and TensorBoard logs."""
    log_dir = tmp_path_factory.mktemp("logs")
    run("train.py", "trainer.max_epochs=2", "callbacks=inspection", *TINY, log_dir=log_dir)
    return log_dir, run_dirs(log_dir)[0]
