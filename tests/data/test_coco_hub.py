"""The hub source, streamed from local parquet shards with the hub's exact features."""

import datasets
import huggingface_hub
import pytest
import torch
from torch.utils.data import DataLoader

from frcnn.data.coco_hub import HubCOCO
from frcnn.data.transforms import Transform, collate


def stream(files, **kwargs):
    return HubCOCO(Transform(400), split="train", data_files=files, shuffle_buffer=4, **kwargs)


def ids(dataset, num_workers=2):
    loader = DataLoader(dataset, batch_size=2, num_workers=num_workers, collate_fn=collate)
    return [t["image_id"] for batch in loader for t in batch["targets"]]


def test_every_image_once_per_epoch_over_two_workers_and_a_new_order_each_epoch(hub_parquet):
    ds = stream(hub_parquet, seed=3)
    epochs = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        epochs.append(ids(ds))
    for order in epochs:
        assert sorted(order) == list(range(12))
    assert len({tuple(order) for order in epochs}) > 1


def test_persistent_workers_see_the_new_epoch(hub_parquet):
    ds = stream(hub_parquet, seed=3)
    loader = DataLoader(
        ds, batch_size=2, num_workers=2, collate_fn=collate, persistent_workers=True
    )
    epochs = []
    for epoch in range(3):
        ds.set_epoch(epoch)  # in the main process, after the workers started
        epochs.append([t["image_id"] for batch in loader for t in batch["targets"]])
    assert all(sorted(order) == list(range(12)) for order in epochs)
    assert len({tuple(order) for order in epochs}) == 3


def test_boxes_and_labels_arrive_transformed(hub_parquet):
    image, target = next(iter(stream(hub_parquet, shuffle=False)))
    assert image.shape == (3, 400, 400)
    # xyxy [10, 20, 50, 60] in a 200x100 image, letterboxed by 2; category 0 -> label 1
    torch.testing.assert_close(target["boxes"], torch.tensor([[20.0, 40.0, 100.0, 120.0]]))
    assert target["labels"].tolist() == [target["image_id"] % 80 + 1]
    assert target["orig_size"] == (100, 200)


def test_two_ranks_split_the_stream_without_overlap(hub_parquet):
    parts = []
    for rank in range(2):
        ds = stream(hub_parquet)
        ds.set_rank(rank, 2)
        parts.append(ids(ds, num_workers=0))
    assert set(parts[0]).isdisjoint(parts[1])
    assert sorted(parts[0] + parts[1]) == list(range(12))


def test_validation_sees_the_same_fixed_subset_every_pass(hub_parquet):
    ds = stream(hub_parquet, shuffle=False, limit=5)
    first, second = ids(ds), ids(ds)
    assert len(first) == 5 and sorted(first) == sorted(second)


def test_bad_records_are_skipped_or_repaired(bad_parquet, caplog):
    ds = stream(bad_parquet, shuffle=False)
    samples = {t["image_id"]: t for _, t in ds}
    assert sorted(samples) == [2, 3, 4]  # the truncated JPEG (1) is skipped
    assert samples[2]["labels"].tolist() == [3]  # the inverted box is dropped
    assert samples[3]["boxes"].shape == (0, 4)  # no objects: an empty target
    assert samples[4]["labels"].tolist() == [6]  # greyscale decoded as RGB
    assert ds.skips.counts == {"malformed boxes dropped": 1, "unreadable image skipped": 1}
    assert "unreadable image skipped (image 1)" in caplog.text


class FlakyStream:
    """A stream that drops its connection once after two examples, then resumes."""

    def __init__(self, examples, failures=1):
        self.examples, self.failures, self.position = examples, failures, 0

    def __iter__(self):
        while self.position < len(self.examples):
            if self.position == 2 and self.failures > 0:
                self.failures -= 1
                raise ConnectionError("connection reset by peer")
            self.position += 1
            yield self.examples[self.position - 1]

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def test_transient_errors_are_retried_and_the_stream_resumes(hub_parquet, monkeypatch):
    ds = stream(hub_parquet, shuffle=False, backoff_s=0)
    examples = list(ds._dataset.take(5))
    monkeypatch.setattr(ds, "_stream", lambda: FlakyStream(examples))
    assert [t["image_id"] for _, t in ds] == [e["image_id"] for e in examples]


def test_the_last_retry_says_how_to_run_offline(hub_parquet, monkeypatch):
    ds = stream(hub_parquet, shuffle=False, backoff_s=0, retries=2)
    examples = list(ds._dataset.take(5))
    monkeypatch.setattr(ds, "_stream", lambda: FlakyStream(examples, failures=10))
    with pytest.raises(ConnectionError, match="data_files"):
        list(ds)


def test_offline_hub_fails_at_once_with_a_message_naming_the_local_option(monkeypatch):
    def unreachable(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", unreachable)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("no retries"))
    with pytest.raises(ConnectionError, match="data.train.data_files") as error:
        HubCOCO(Transform(64), split="train")
    assert str(error.value).count("Offline") == 1


@pytest.mark.parametrize(
    ("error", "split", "message"),
    [
        # a failing stream start gets the same message as a failing probe
        (
            ConnectionError("Couldn't reach 'detection-datasets/coco' on the Hub"),
            "train",
            "data.train.data_files",
        ),
        # an unknown split names the key
        (
            ValueError("Unknown split \"validation\". Should be one of ['train', 'val']."),
            "validation",
            "split='validation'",
        ),
    ],
)
def test_stream_start_errors_name_the_key(monkeypatch, error, split, message):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", lambda *a, **k: None)
    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(type(error), match=message):
        HubCOCO(Transform(64), split=split)
