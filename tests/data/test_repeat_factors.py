"""Repeat-factor sampling: LVIS's factors on a hand-computed case; the sampler's epochs, the
same per seed and epoch, disjoint and complete across processes; through the data module."""

import functools
import math

import numpy as np
import pytest
import torch

from frcnn.data import DetectionDataModule, HubCOCO, SyntheticShapes
from frcnn.data.datamodule import LOGGED_CLASSES, sampling_lines
from frcnn.data.repeat_factors import RepeatFactorSampler, class_table, repeat_factors
from frcnn.data.transforms import Record
from tests.helpers import in_two_processes

# 4 images: class 1 in three of them, class 2 in one (with class 1), none in the last
LABELS = [np.array([1, 1]), np.array([1]), np.array([1, 2]), np.array([], dtype=np.int64)]


def test_factors_follow_the_rarest_class_of_each_image():
    """f(1) = 3/4, f(2) = 1/4; t = 1: r(1) = sqrt(4/3), r(2) = 2; an image takes its rarest
    class's, an image without objects 1."""
    factors = repeat_factors(LABELS, 2, threshold=1.0)
    np.testing.assert_allclose(factors, [math.sqrt(4 / 3), math.sqrt(4 / 3), 2.0, 1.0])
    # t = 0.25: no class is rarer than that: nothing repeats
    np.testing.assert_allclose(repeat_factors(LABELS, 2, threshold=0.25), [1, 1, 1, 1])
    rows = class_table(LABELS, factors, ["a", "b"])
    assert [(name, images) for name, images, _, _ in rows] == [("a", 3), ("b", 1)]
    assert rows[1][2] == pytest.approx(0.25) and rows[1][3] == pytest.approx(2 / factors.sum())


def test_factors_and_table_of_many_images_follow_the_definition_image_by_image():
    """Against the definitions applied to each image and class in turn, on 300 images of 40
    classes (a long tail, images without boxes, repeated labels)."""
    rng = np.random.default_rng(0)
    tail = 1 / np.arange(1, 41) / sum(1 / np.arange(1, 41))
    labels = [rng.choice(np.arange(1, 41), size=rng.integers(0, 6), p=tail) for _ in range(300)]
    factors = repeat_factors(labels, 40, threshold=0.1)
    has = np.array([[c in ls for c in range(1, 41)] for ls in labels])  # (image, class)
    per_class = np.maximum(1, np.sqrt(0.1 / has.mean(0)))
    expected = [max([1.0, *per_class[has[i]]]) for i in range(len(labels))]
    np.testing.assert_allclose(factors, expected)
    assert (factors > 1).any() and (factors == 1).any()
    rows = class_table(labels, factors, [f"c{k}" for k in range(1, 41)])
    for k, (name, images, before, after) in enumerate(rows):
        assert (name, images) == (f"c{k + 1}", has[:, k].sum())
        assert before == pytest.approx(has[:, k].mean())
        assert after == pytest.approx(factors[has[:, k]].sum() / factors.sum())
    # the log: the 20 classes whose images repeat most (their mean factor), then a line
    lines = sampling_lines(rows).splitlines()
    mean_factor = [factors[has[:, k]].mean() if has[:, k].any() else 0 for k in range(40)]
    most = {f"c{k + 1}" for k in np.argsort(mean_factor)[::-1][:LOGGED_CLASSES]}
    assert len(lines) == LOGGED_CLASSES + 1 and "20 most repeated of 40 classes" in lines[-1]
    assert {line.split()[0] for line in lines[:-1]} == most and "c1" not in most
    assert len(sampling_lines(rows[:LOGGED_CLASSES]).splitlines()) == LOGGED_CLASSES  # all


def test_epochs_are_the_factors_on_average_and_the_same_per_seed_and_epoch():
    factors = np.array([1.0, 1.5, 2.25, 3.0])
    sampler = RepeatFactorSampler(range(4), factors, seed=7)
    assert len(sampler) == round(factors.sum()) == 8
    counts = np.zeros(4)
    for epoch in range(400):
        sampler.set_epoch(epoch)
        indices = list(sampler)
        assert len(indices) == 8
        counts += np.bincount(indices, minlength=4)
    np.testing.assert_allclose(counts / counts.sum(), factors / factors.sum(), atol=0.02)
    again = RepeatFactorSampler(range(4), factors, seed=7)
    again.set_epoch(3)
    sampler.set_epoch(3)
    assert list(again) == list(sampler)
    sampler.set_epoch(4)
    assert list(again) != list(sampler)  # each epoch its own order and rounding


def test_two_processes_take_disjoint_parts_that_make_the_whole_epoch():
    factors = np.array([1.0, 2.6, 1.3, 4.0, 1.0, 1.7, 1.0])
    ranks = [RepeatFactorSampler(range(7), factors, seed=1, num_replicas=2, rank=r) for r in (0, 1)]
    for sampler in ranks:
        sampler.set_epoch(5)
    whole = ranks[0].epoch_indices()
    parts = [list(sampler) for sampler in ranks]
    assert len(parts[0]) == len(parts[1]) == len(ranks[0]) == round(factors.sum()) // 2
    assert sorted(parts[0] + parts[1]) == sorted(whole.tolist())
    assert parts[0] == whole[0::2].tolist() and parts[1] == whole[1::2].tolist()


class OneClassRare(SyntheticShapes):
    """Synthetic images whose labels are all 1, but one image in eight has class 2 only."""

    def record(self, index: int) -> Record:
        record = super().record(index)
        label = 2 if index % 8 == 0 else 1
        return Record(record.image, record.boxes, np.full(len(record.labels), label), index)


def test_the_data_module_repeats_the_rare_class_s_images(caplog):
    # the setting as Hydra gives it: a keyword of the training source's partial
    dm = DetectionDataModule(
        functools.partial(OneClassRare, num_images=16, num_classes=2, repeat_factor_threshold=0.5),
        functools.partial(SyntheticShapes, num_images=4, num_classes=2),
        batch_size=2,
        num_workers=0,
        image_size=64,
    )
    with caplog.at_level("INFO"):
        dm.setup("fit")
    # f(2) = 2/16: r = sqrt(0.5 / 0.125) = 2 for images 0 and 8; f(1) = 14/16 > 0.5: 1
    np.testing.assert_allclose(dm.repeat_factors, [2 if i % 8 == 0 else 1 for i in range(16)])
    assert "an epoch of 18 images in place of 16" in caplog.text
    torch.manual_seed(0)
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, RepeatFactorSampler) and len(loader) == 9
    ids = [t["image_id"] for batch in loader for t in batch["targets"]]
    assert sorted(ids) == sorted([*range(16), 0, 8])


def test_a_stream_cannot_repeat_images(hub_parquet):
    dm = DetectionDataModule(
        functools.partial(HubCOCO, data_files=hub_parquet, repeat_factor_threshold=0.1),
        functools.partial(HubCOCO, data_files=hub_parquet, split="val"),
        num_workers=0,
    )
    with pytest.raises(ValueError, match="repeat_factor_threshold=0.1: .* a streamed one cannot"):
        dm.setup("fit")


def test_two_real_processes_share_out_each_epoch(tmp_path):
    """Under a real process group (gloo), each process's loader takes its own part of the
    epoch, which the other's completes; the parts are the same whatever process asks."""

    def epoch_ids(rank: int) -> list:
        torch.set_num_threads(1)  # a forked child: the parent's OpenMP threads are not its own
        torch.manual_seed(42)  # seed_everything: the same seed on every process
        rare = functools.partial(OneClassRare, num_images=16, num_classes=2)
        dm = DetectionDataModule(
            functools.partial(rare, repeat_factor_threshold=0.5),
            functools.partial(SyntheticShapes, num_images=2, num_classes=2),
            batch_size=1,
            num_workers=0,
            image_size=64,
        )
        dm.setup("fit")
        sampler = dm.train_dataloader().sampler
        sampler.set_epoch(1)  # as Lightning does at each epoch
        return list(sampler)

    parts = in_two_processes(epoch_ids, tmp_path)
    whole = RepeatFactorSampler(range(16), [2.0 if i % 8 == 0 else 1.0 for i in range(16)], 42, 2)
    whole.set_epoch(1)
    assert len(parts[0]) == len(parts[1]) == 9
    assert sorted(parts[0] + parts[1]) == sorted(whole.epoch_indices().tolist())
    assert parts[0] == whole.epoch_indices()[0::2].tolist()
