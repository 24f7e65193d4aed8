"""The hub source, streamed from local parquet shards with the hub's exact features."""

import multiprocessing
import os

import datasets
import fsspec
import huggingface_hub
import pytest
import torch
from fsspec.implementations.memory import MemoryFile
from packaging.version import Version
from torch.utils.data import DataLoader

from frcnn.data.coco_hub import HubCOCO
from frcnn.data.transforms import Transform, collate
from tests.data.conftest import hub_dataset, hub_row, stop_workers, write_hub_parquet

# the HTTP client of the hub's file system, whose errors are a dropped connection's
if Version(huggingface_hub.__version__) >= Version("2"):
    import httpx2 as httpx
else:
    import httpx


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
    stop_workers(loader)
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


def on_memory_fs(local_paths, prefix):
    """Copies of local parquet files on fsspec's in-memory file system: `datasets` opens such
    a path as it opens hub files (fsspec, reads wrapped in its own retries), not as a local
    file. Returns the memory:// paths."""
    fs = fsspec.filesystem("memory")
    paths = []
    for path in local_paths:
        remote = f"/{prefix}/{os.path.basename(path)}"
        with open(path, "rb") as file:
            fs.pipe(remote, file.read())
        paths.append(f"memory://{remote}")
    return paths


class DroppedConnections:
    """Makes the at-th file read of the stream (counted over all its processes, DataLoader
    workers included) fail as a dropped connection: httpx's error, as the hub's file system
    raises it, or the socket's own; `every` makes every read from there on fail."""

    def __init__(self, monkeypatch, at: int, every: bool = False, error=httpx.ReadError):
        self.reads = multiprocessing.Value("i", 0)  # shared with forked workers
        self.dropped = multiprocessing.Value("i", 0)
        read = MemoryFile.read

        def flaky(file, *args, **kwargs):
            with self.reads.get_lock():
                self.reads.value += 1
                drop = self.reads.value == at or (every and self.reads.value >= at)
            if drop:
                with self.dropped.get_lock():
                    self.dropped.value += 1
                raise error("connection reset by peer")
            return read(file, *args, **kwargs)

        monkeypatch.setattr(MemoryFile, "read", flaky)


@pytest.fixture
def four_shards(tmp_path):
    """Four hub-schema parquet shards of 6 images each (ids 0..23), two rows per row group."""
    paths = []
    for shard in range(4):
        rows = [
            hub_row(i, 64, 32, [[10.0, 2.0, 50.0, 30.0]], [i % 80])
            for i in range(shard * 6, shard * 6 + 6)
        ]
        path = tmp_path / f"train-{shard:05d}-of-00004.parquet"
        paths.append(write_hub_parquet(path, rows, batch_size=2))
    return paths


# where the connection drops (the worker count, the read) and how (the error's type) are
# independent: every (workers, read) pair once, and each type with every worker count and every
# read (all pairs of the three, 9 runs rather than the 18 of the whole product)
DROPS = [
    (num_workers, at, (httpx.ReadError, ConnectionResetError)[(w + a) % 2])
    for w, num_workers in enumerate([0, 2, 4])
    for a, at in enumerate([1, 3, 6])
]


@pytest.mark.parametrize(("num_workers", "at", "error"), DROPS)
def test_a_dropped_connection_anywhere_resumes_where_it_stopped(
    four_shards, monkeypatch, num_workers, at, error
):
    """The real `datasets` stream, shuffled and sharded over workers, with the connection
    dropped at the at-th file read of every reader: the same images in the same order."""
    expected = ids(stream(four_shards, seed=5), num_workers)  # the local copies, undisturbed
    assert sorted(expected) == list(range(24))
    files = on_memory_fs(four_shards, f"drop-{num_workers}-{at}")
    ds = stream(files, seed=5, backoff_s=0)  # load_dataset reads metadata: not counted
    dropped = DroppedConnections(monkeypatch, at, error=error)
    assert ids(ds, num_workers) == expected
    assert dropped.dropped.value == 1 and dropped.reads.value > at


def test_after_the_last_retry_the_run_stops_saying_how_to_go_on(four_shards, monkeypatch):
    ds = stream(on_memory_fs(four_shards, "down"), retries=2, backoff_s=0)
    DroppedConnections(monkeypatch, at=3, every=True)
    with pytest.raises(ConnectionError, match="after 2 retries.*last.ckpt.*data_files"):
        ids(ds, num_workers=0)


def test_a_corrupt_local_parquet_fails_at_once_naming_it(four_shards, tmp_path):
    broken = tmp_path / "train-00002-of-00004.parquet"
    broken.write_bytes(broken.read_bytes()[:-100])  # the footer gone
    ds = stream(four_shards, shuffle=False, backoff_s=60)  # a retry would take minutes
    with pytest.raises(OSError, match=f"cannot read {broken}"):
        ids(ds, num_workers=0)


def test_a_missing_local_data_file_is_named_not_blamed_on_the_hub(tmp_path):
    missing = tmp_path / "nowhere" / "train-*.parquet"
    with pytest.raises(FileNotFoundError, match="no such local file") as error:
        stream([str(missing)])
    assert str(missing) in str(error.value) and "hub" not in str(error.value)


@pytest.fixture(scope="module")
def split_shards(tmp_path_factory):
    """80 tiny images (ids 0..79, in this order) as 1, 2 or 40 parquet shards."""

    root = tmp_path_factory.mktemp("shards")
    rows = [hub_row(i, 16, 16, [[2.0, 2.0, 12.0, 12.0]], [0]) for i in range(80)]
    layouts = {}
    for num_shards in (1, 2, 40):
        per = 80 // num_shards
        layouts[num_shards] = []
        for shard in range(num_shards):
            part = rows[shard * per : (shard + 1) * per]
            path = root / f"{num_shards}" / f"val-{shard:05d}-of-{num_shards:05d}.parquet"
            path.parent.mkdir(exist_ok=True)
            layouts[num_shards].append(write_hub_parquet(path, part))
    return layouts


def read_split(files, limit, num_workers, world_size):
    """Image ids read by all ranks and workers of one validation pass."""
    read = []
    for rank in range(world_size):
        ds = HubCOCO(Transform(16), split="val", data_files=files, shuffle=False, limit=limit)
        ds.set_rank(rank, world_size)
        read += ids(ds, num_workers)
    return read


@pytest.mark.parametrize("num_shards", [1, 2, 40])
# workers: none, one, as many as 2 shards, and 3: more than 1 or 2 shards, fewer than 40 and
# dividing neither 40 nor a rank's 20 (uneven shares, as most counts give; coco400's 8 divides
# both, and forks 16 processes a pass at world size 2)
@pytest.mark.parametrize("num_workers", [0, 1, 2, 3])
@pytest.mark.parametrize("world_size", [1, 2])
def test_a_validation_subset_is_the_same_whatever_reads_it(
    split_shards, num_shards, num_workers, world_size
):
    subset = read_split(split_shards[num_shards], 25, num_workers, world_size)
    assert sorted(subset) == list(range(25))  # exactly the first 25, each once
    whole = read_split(split_shards[num_shards], None, num_workers, world_size)
    assert sorted(whole) == list(range(80))  # every image once per pass


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


def test_a_row_without_image_bytes_is_skipped_and_counted(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [hub_row(1, 32, 32, [[1.0, 1.0, 9.0, 9.0]], [0]), hub_row(2, 32, 32, [], [])]
    table = hub_dataset(rows).data.table
    # the hub schema, with row 1's image bytes null (datasets itself refuses to write that)
    image = table.column("image").combine_chunks()
    nulled = pa.StructArray.from_arrays(
        [pa.array([None, image.field("bytes")[1].as_py()], pa.binary()), image.field("path")],
        names=["bytes", "path"],
    )
    table = table.set_column(table.schema.get_field_index("image"), "image", nulled)
    path = tmp_path / "null.parquet"
    pq.write_table(table, path)
    ds = stream([str(path)], shuffle=False)
    assert [t["image_id"] for _, t in ds] == [2]
    assert ds.skips.counts == {"malformed record skipped": 1}


def test_a_stream_of_nothing_usable_stops_naming_the_source_and_the_reason(tmp_path):
    """A parquet without an `objects` column: every row is skipped; the stream must stop, not
    run empty epochs."""
    table = hub_dataset([hub_row(i, 32, 32, [], []) for i in range(12)]).data.table
    path = tmp_path / "no_objects.parquet"
    import pyarrow.parquet as pq

    pq.write_table(table.drop_columns(["objects"]), path)
    ds = stream([str(path)], shuffle=False, max_skips_in_a_row=5)
    reason = r"gave no sample \(malformed record skipped: 5 in this process\)"
    with pytest.raises(ValueError, match=rf"5 rows in a row of data_files=.* {reason}"):
        list(ds)
    # a few bad rows between good ones are skipped, as before
    rows = [hub_row(i, 32, 32, [[1.0, 1.0, 9.0, 9.0]], [0]) for i in range(6)]
    rows[2]["image"] = {"bytes": b"not an image", "path": None}
    ds = stream([write_hub_parquet(tmp_path / "some_bad.parquet", rows)], shuffle=False,
                max_skips_in_a_row=2)  # fmt: skip
    assert [t["image_id"] for _, t in ds] == [0, 1, 3, 4, 5]


def test_a_stream_of_fewer_shards_than_workers_starts_as_many_workers_as_read(hub_parquet, caplog):
    """`datasets` gives each DataLoader worker whole shards; a worker beyond them stops at once
    with a warning, every epoch. The training loader starts one per shard (2 here), said;
    validation's `limit` subset is read by every worker."""
    import functools
    import logging

    from frcnn.data import DetectionDataModule

    make = functools.partial(HubCOCO, split="train", data_files=hub_parquet)
    data = DetectionDataModule(
        make, functools.partial(make, limit=4), batch_size=2, num_workers=3, image_size=64
    )
    data.setup("fit")
    with caplog.at_level(logging.INFO):
        loader = data.train_dataloader().loader
    assert loader.num_workers == 2 and data.val_dataloader().num_workers == 3
    assert "data.num_workers=3, but the train stream has 2 shard(s) per process" in caplog.text
    assert sorted(t["image_id"] for batch in loader for t in batch["targets"]) == list(range(12))
    stop_workers(loader)
