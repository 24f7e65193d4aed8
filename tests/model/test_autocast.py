"""The detector under autocast: activations stay in the low-precision dtype end to end."""

import pytest
import torch

from frcnn.model import FasterRCNN


def synthetic_targets():
    boxes = [[[10.0, 10.0, 50.0, 60.0], [40.0, 30.0, 90.0, 70.0]], [[60.0, 20.0, 120.0, 100.0]]]
    labels = [[1, 3], [2]]
    return [
        {"boxes": torch.tensor(b), "labels": torch.tensor(lab)}
        for b, lab in zip(boxes, labels, strict=True)
    ]


def small_detector(**backbone) -> FasterRCNN:
    torch.manual_seed(0)
    return FasterRCNN(
        num_classes=3,
        backbone=dict(depth=18, norm="frozen_bn", weights=None, **backbone),
        fpn_channels=32,
        anchors=dict(sizes=((16,), (32,), (64,), (128,), (256,))),
        rpn=dict(pre_nms_top_n_train=300, post_nms_top_n_train=100),
        roi_heads=dict(batch_size_per_image=64, representation_size=64),
    )


def test_c2_to_c5_p2_to_p6_and_the_pooled_features_are_bfloat16_under_autocast():
    model = small_detector(frozen="layer3").train()
    images = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8)
    targets = synthetic_targets()
    seen = {}
    model.backbone.register_forward_hook(lambda m, i, out: seen.update(c=out))
    model.fpn.register_forward_hook(lambda m, i, out: seen.update(p=out))
    model.roi_heads.box_head.register_forward_hook(lambda m, i, out: seen.update(pooled=i[0]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(images, targets)
    assert [c.dtype for c in seen["c"]] == [torch.bfloat16] * 4
    assert [p.dtype for p in seen["p"]] == [torch.bfloat16] * 5
    assert seen["pooled"].dtype == torch.bfloat16


@pytest.mark.parametrize("frozen", ["layer3", "none"])
def test_losses_under_bfloat16_autocast_match_float32(frozen):
    """Within 5% (relative) of each float32 loss: bfloat16 keeps 8 bits of mantissa, through
    a ResNet-18, an FPN and two heads. Sampling draws the same boxes (same seed)."""
    model = small_detector(frozen=frozen).train()
    images = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8)
    targets = synthetic_targets()
    torch.manual_seed(1)
    full = model(images, targets)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(images, targets)
    for name in full:
        torch.testing.assert_close(low[name].float(), full[name], rtol=0.05, atol=1e-3)
