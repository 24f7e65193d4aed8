"""End to end: a small detector learns the synthetic shapes (loss falls, mAP rises)."""

from frcnn.data import collate
from tests.conftest import mean_ap


def test_a_small_detector_overfits_a_few_synthetic_images(overfit_detector):
    model, data, history, untrained = overfit_detector
    batch = collate([data[i] for i in range(8)])
    assert untrained < 0.1
    assert sum(history[-10:]) < 0.8 * sum(history[:10])
    assert mean_ap(model, batch["images"], batch["targets"]) > 0.8
