"""Targets: the batch's list of per-image target dicts, carried as a handful of padded tensors;
and how a count reads (`counted`)."""

import pickle
from multiprocessing.reduction import ForkingPickler

import pytest
import torch
import torch.multiprocessing  # noqa: F401  (registers its tensor reducers with ForkingPickler)
from lightning.fabric.utilities.apply_func import move_data_to_device
from packaging.version import Version
from torch.utils.data import DataLoader
from torch.utils.data._utils.pin_memory import pin_memory

from frcnn.data import collate
from frcnn.structures import Targets, counted, pad_targets
from tests.model.helpers import DispatchedOps


def target(num_boxes: int, seed: int, crowd: bool = True) -> dict:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num_boxes, 2, generator=g) * 50
    out = {
        "boxes": torch.cat([xy, xy + 1 + torch.rand(num_boxes, 2, generator=g) * 20], 1),
        "labels": torch.randint(1, 5, (num_boxes,), generator=g),
        "image_id": seed,
        "orig_size": (480, 640),
        "scale_xy": torch.rand(2, generator=g),
    }
    if crowd:
        out["crowd_boxes"] = torch.zeros(seed % 2, 4)
    return out


def plain_targets():
    return [target(k, seed) for seed, k in enumerate([3, 0, 7, 1])]


def assert_same(targets, expected):
    assert len(targets) == len(expected)
    for got, want in zip(targets, expected, strict=True):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got[key], value), key
            else:
                assert got[key] == value, key


def storages(targets) -> set[int]:
    return {
        v.untyped_storage().data_ptr()
        for t in targets
        for v in t.values()
        if isinstance(v, torch.Tensor) and v.numel()
    }


def test_targets_are_the_same_list_of_dicts_backed_by_one_tensor_per_key():
    expected = plain_targets()
    targets = Targets(expected)
    assert isinstance(targets, list)
    assert_same(targets, expected)
    assert set(targets.padded) == {"boxes", "labels", "scale_xy", "crowd_boxes"}
    assert targets.padded["boxes"].shape == (4, 7, 4)
    assert targets.padded["crowd_boxes"].shape == (4, 1, 4)  # at least one row
    assert (targets.padded["boxes"][1] == 0).all() and (targets.padded["labels"][0, 3:] == 0).all()
    assert len(storages(targets)) == len(targets.padded)


def test_a_batch_without_boxes_pads_to_one_row():
    targets = Targets([target(0, 0), target(0, 1)])
    assert targets.padded["boxes"].shape == (2, 1, 4)
    gt = pad_targets(targets, "cpu")
    assert gt.boxes.shape == (2, 1, 4) and not gt.valid.any()


def test_keys_some_images_lack_travel_on_their_own():
    expected = [target(2, 0, crowd=False), target(3, 1)]
    targets = Targets(expected)
    assert "crowd_boxes" not in targets.padded
    assert_same(targets, expected)
    assert_same(pickle.loads(pickle.dumps(targets)), expected)


def test_padded_ground_truth_is_the_padded_list_and_copies_nothing():
    expected = plain_targets()
    targets = Targets(expected)
    with DispatchedOps() as from_list:
        want = pad_targets(expected, "cpu")
    with DispatchedOps() as from_targets:
        got = pad_targets(targets, "cpu")
    for key, value in want._asdict().items():
        assert torch.equal(getattr(got, key), value), key
    # and both are each image's boxes and labels, then zero rows marked invalid
    assert got.boxes.shape == (4, 7, 4) and got.labels.shape == (4, 7)
    for i, t in enumerate(expected):
        k = len(t["labels"])
        assert torch.equal(got.boxes[i, :k], t["boxes"]) and (got.boxes[i, k:] == 0).all()
        assert torch.equal(got.labels[i, :k], t["labels"]) and (got.labels[i, k:] == 0).all()
        assert got.valid[i, :k].all() and not got.valid[i, k:].any()
    copies = {"copy_", "cat", "stack", "constant_pad_nd", "_to_copy", "new_zeros", "zeros"}
    assert copies & {op.name for op in from_list.ops}  # the list is padded image by image
    assert not copies & {op.name for op in from_targets.ops}  # Targets are padded already


def test_pickled_as_its_padded_tensors():
    expected = plain_targets()
    targets = pickle.loads(ForkingPickler.dumps(Targets(expected)))
    assert isinstance(targets, Targets)
    assert_same(targets, expected)
    assert len(storages(targets)) == len(targets.padded)


def test_a_replaced_value_travels_with_its_new_value():
    targets = Targets(plain_targets())
    targets[2]["boxes"] = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    targets[2]["labels"] = torch.tensor([3])
    targets.append(target(2, 9))
    expected = [dict(t) for t in targets]
    assert_same(targets.to("cpu"), expected)
    assert_same(pickle.loads(pickle.dumps(targets)), expected)
    gt = pad_targets(targets, "cpu")
    assert torch.equal(gt.boxes[2, :1], expected[2]["boxes"]) and gt.valid[2].sum() == 1


def batch():
    samples = [(torch.zeros(3, 8, 8, dtype=torch.uint8), t) for t in plain_targets()]
    return collate(samples)


def test_lightning_moves_a_batch_in_one_copy_per_padded_tensor():
    b = batch()
    with DispatchedOps() as calls:
        moved = move_data_to_device(b, torch.device("meta"))
    copies = [op.kwargs for op in calls.ops if op.name == "_to_copy"]
    assert len(copies) == 2 + len(b["targets"].padded)  # images, image_sizes, padded targets
    assert isinstance(moved["targets"], Targets)
    assert all(v.device.type == "meta" for v in moved["targets"].padded.values())
    for got, want in zip(moved["targets"], b["targets"], strict=True):
        assert got["boxes"].shape == want["boxes"].shape and got["image_id"] == want["image_id"]
    # the padded targets are copied non-blocking, as Lightning copies tensors
    assert sum(bool(kwargs.get("non_blocking")) for kwargs in copies) >= len(b["targets"].padded)


# torch before 2.11 asks a list (Targets is one) for its own pin_memory only after pinning its
# items one by one: the values arrive the same (Targets repacks them), in 18 pinned copies, not 6
@pytest.mark.skipif(
    Version(torch.__version__).release < (2, 11),
    reason="torch < 2.11 pins a list's items one by one, not through its pin_memory",
)
def test_the_pin_thread_pins_one_tensor_per_padded_key(monkeypatch):
    pinned = []

    def fake_pin(tensor, *args, **kwargs):  # no pinned memory without a GPU
        pinned.append(tensor.shape)
        return tensor.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    b = batch()
    out = pin_memory(b)  # the DataLoader's pin thread's own function
    assert len(pinned) == 2 + len(b["targets"].padded)
    assert_same(out["targets"], b["targets"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader_workers_send_the_padded_tensors(num_workers):
    samples = [(torch.zeros(3, 8, 8, dtype=torch.uint8), t) for t in plain_targets()]
    loader = DataLoader(samples, batch_size=2, num_workers=num_workers, collate_fn=collate)
    received = [t for b in loader for t in b["targets"]]
    assert_same(received, [dict(t) for t in Targets(plain_targets())])
    for b in loader:
        assert isinstance(b["targets"], Targets)
        assert len(storages(b["targets"])) <= len(b["targets"].padded)


@pytest.mark.parametrize(("device", "non_blocking"), [("meta", True), ("cpu", False)])
def test_copies_to_an_accelerator_are_non_blocking_and_to_the_host_are_not(
    monkeypatch, device, non_blocking
):
    calls, to = [], torch.Tensor.to

    def recording_to(tensor, *args, **kwargs):
        calls.append(kwargs.get("non_blocking"))
        return to(tensor, *args, **kwargs)

    targets = Targets(plain_targets())
    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    targets.to(device)
    # a host copy read before it arrives would hold garbage: only accelerators get non_blocking
    assert calls and set(calls) == {non_blocking}


def test_a_count_reads_in_the_singular_for_one_only():
    assert [counted(n, "image") for n in (0, 1, 2)] == ["0 images", "1 image", "2 images"]
    assert [counted(n, "box", "boxes") for n in (1, 12)] == ["1 box", "12 boxes"]
