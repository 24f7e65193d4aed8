"""Multi-scale RoIAlign against torchvision's roi_align and MultiScaleRoIAlign."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.ops import MultiScaleRoIAlign, roi_align

from frcnn.model.poolers import assign_levels, multiscale_roi_align, roi_align_per_level
from tests.model.helpers import CHANNELS, SIDE, STRIDES, features, random_boxes


def square(side):
    return torch.tensor([[10.0, 10.0, 10.0 + side, 10.0 + side]])


@pytest.mark.parametrize(
    ("side", "level"), [(224, 2), (223, 1), (112, 1), (111, 0), (448, 3), (2000, 3), (5, 0)]
)
def test_level_assignment_follows_the_fpn_rule(side, level):
    # P4 (index 2) for a 224-pixel box, one level per factor of two, clamped to P2..P5
    assert assign_levels(square(side), STRIDES).item() == level


def test_multiscale_roi_align_matches_torchvision():
    g = torch.Generator().manual_seed(0)
    feats = features(g)
    boxes = torch.stack([random_boxes(40, 200, g), random_boxes(40, 200, g)])
    image_index = torch.arange(2).repeat_interleave(40)
    ours = multiscale_roi_align(feats, boxes.flatten(0, 1), image_index, STRIDES, 7, 2)
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    theirs = pooler({str(i): f for i, f in enumerate(feats)}, list(boxes), [(SIDE, SIDE)] * 2)
    torch.testing.assert_close(ours, theirs)


def test_the_exported_per_level_roi_align_returns_the_same_values():
    """The ONNX export's stand-in pools every box, edge cases included, as the training kernel."""
    g = torch.Generator().manual_seed(1)
    feats = features(g)
    large = torch.cat([square(side) for side in (150, 300, 600)])  # P4, P5, beyond P5
    boxes = torch.cat([random_boxes(60, 200, g), large, edge_cases(SIDE)])
    image_index = torch.randint(0, 2, (len(boxes),), generator=g)
    ours = multiscale_roi_align(feats, boxes, image_index, STRIDES, 7, 2)
    per_level = roi_align_per_level(feats, boxes, image_index, STRIDES, 7, 2)
    assert len(assign_levels(boxes, STRIDES).unique()) == 4  # every level is used
    torch.testing.assert_close(per_level, ours, rtol=1e-5, atol=1e-6)


def edge_cases(side):
    """Boxes torchvision's bilinear rules treat specially, on a map of `side` input pixels."""
    return torch.tensor(
        [
            [-30.0, -30.0, 20.0, 20.0],  # partly outside, top-left
            [side - 20.0, side - 20.0, side + 40.0, side + 40.0],  # partly outside, bottom-right
            [side + 50.0, 10.0, side + 90.0, 60.0],  # entirely beyond the right edge
            [5.0, 5.0, 5.5, 5.2],  # smaller than a cell (sides are clamped to one cell)
            [0.0, 0.0, side, side],  # the whole map
            [3.0, side - 1.0, 40.0, side],  # along the bottom edge
        ]
    )


DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
    ),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("output_size", "sampling_ratio"), [(7, 2), (7, 1), (5, 3)])
def test_roi_align_matches_torchvision_values_and_gradients(output_size, sampling_ratio, device):
    g = torch.Generator().manual_seed(5)
    stride, side = 8, 96
    feature = torch.randn(2, CHANNELS, side // stride, side // stride, generator=g)
    boxes = torch.cat([edge_cases(side), random_boxes(20, side, g)])
    image_index = torch.arange(len(boxes)) % 2
    upstream = torch.randn(len(boxes), CHANNELS, output_size, output_size, generator=g)
    feature, boxes, image_index, upstream = (
        t.to(device) for t in (feature, boxes, image_index, upstream)
    )
    feature.requires_grad_(True)
    rois = torch.cat([image_index[:, None].float(), boxes], 1)

    ours = multiscale_roi_align(
        [feature], boxes, image_index, (stride,), output_size, sampling_ratio
    )
    (grad_ours,) = torch.autograd.grad(ours, feature, upstream)
    theirs = roi_align(feature, rois, output_size, 1 / stride, sampling_ratio, aligned=False)
    (grad_theirs,) = torch.autograd.grad(theirs, feature, upstream)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grad_ours, grad_theirs)


def test_roi_align_never_waits_for_the_device():
    # no op whose output size depends on the data (each would be a host sync on a GPU)
    class OpNames(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            masks = [a for a in args if isinstance(a, list | tuple)]
            bool_index = any(getattr(i, "dtype", None) == torch.bool for m in masks for i in m)
            names.append(func._schema.name + (" with a boolean mask" if bool_index else ""))
            return func(*args, **(kwargs or {}))

    g = torch.Generator().manual_seed(7)
    feats, boxes = features(g), random_boxes(50, 200, g)
    names = []
    with OpNames():
        multiscale_roi_align(feats, boxes, torch.arange(50) % 2, STRIDES, 7, 2)
    assert any("embedding_bag" in name for name in names)
    waiting = ("nonzero", "masked_select", "_local_scalar_dense", "boolean mask", "unique")
    assert not [name for name in names if any(w in name for w in waiting)]


def test_roi_align_pools_in_the_features_dtype_and_takes_no_boxes():
    """bfloat16 features (autocast) pool in bfloat16, without a float32 copy of the pyramid:
    within bfloat16's rounding of the float32 pooling (16 weighted taps a bin)."""
    g = torch.Generator().manual_seed(6)
    feats = [f.bfloat16() for f in features(g)]
    boxes = random_boxes(10, 200, g)
    pooled = multiscale_roi_align(feats, boxes, torch.zeros(10, dtype=torch.long), STRIDES, 7, 2)
    expected = multiscale_roi_align(
        [f.float() for f in feats], boxes, torch.zeros(10, dtype=torch.long), STRIDES, 7, 2
    )
    assert pooled.dtype == torch.bfloat16
    torch.testing.assert_close(pooled.float(), expected, rtol=2e-2, atol=2e-2)
    empty = multiscale_roi_align(
        feats, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), STRIDES, 7, 2
    )
    assert empty.shape == (0, CHANNELS, 7, 7)
