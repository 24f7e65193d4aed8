"""End to end: a small detector learns the synthetic shapes (loss falls, mAP rises)."""

import pytest

from frcnn.data import collate
from frcnn.training.callbacks import StopOnDivergence
from tests.helpers import mean_ap


def test_a_small_detector_overfits_a_few_synthetic_images(overfit_detector):
    model, data, history, untrained = overfit_detector
    batch = collate([data[i] for i in range(8)])
    assert untrained < 0.1
    assert sum(history[-10:]) < 0.8 * sum(history[:10])
    assert mean_ap(model, batch["images"], batch["targets"]) > 0.8


def test_learning_never_trips_the_divergence_stop(overfit_detector):
    """The default rule (conf/callbacks/default.yaml) on this run's losses, and a window of 5."""
    history = overfit_detector[2]
    for window in (20, 5):
        guard = StopOnDivergence(factor=10.0, window=window)
        guard.update(history[0], "step 0")  # the first step's loss, the callback's reference
        for start in range(0, len(history) - window + 1, window):
            mean = sum(history[start : start + window]) / window
            guard.update(mean, f"steps {start}-{start + window - 1}")
    exploded = history[:5] + [h * 1e3 for h in history[5:10]]  # a run that does explode
    guard = StopOnDivergence(factor=10.0, window=5)
    guard.update(exploded[0], "step 0")
    with pytest.raises(FloatingPointError, match=r"loss exploded: .* over steps 5-9.*\(.*step 0\)"):
        guard.update(sum(exploded[5:]) / 5, "steps 5-9")
