"""Parity with torchvision: same weights and settings give the same detections."""

import pytest
import torch
import torchvision
from torchvision.models.detection import FasterRCNN as TVFasterRCNN
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

from frcnn.model import from_torchvision
from frcnn.model.convert import convert_key
from tests.model.helpers import sorted_rows


def randomise(model, generator):
    """Random normalisation statistics and confident class scores, so detections exist."""
    for m in model.modules():
        if isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
            # small scales keep activations of the random 50-layer network from exploding
            m.weight.copy_(torch.rand(m.weight.shape, generator=generator) * 0.4 + 0.2)
    predictor = model.roi_heads.box_predictor
    torch.nn.init.normal_(predictor.cls_score.weight, std=1.0, generator=generator)
    torch.nn.init.normal_(predictor.bbox_pred.weight, std=0.005, generator=generator)


def torchvision_default(side):
    return torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=side, max_size=side
    )


def torchvision_frozen(side):
    """The COCO training setting: FrozenBatchNorm2d, stem and layer1 frozen, 5 classes."""
    resnet = torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(resnet, trainable_layers=3)
    return TVFasterRCNN(backbone, num_classes=6, min_size=side, max_size=side)


@pytest.mark.parametrize(("build", "side"), [(torchvision_default, 448), (torchvision_frozen, 384)])
def test_detections_match_torchvision(build, side):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    tv = build(side).eval()
    with torch.no_grad():
        randomise(tv, g)
    ours = from_torchvision(tv).eval()
    images = torch.randint(0, 256, (2, 3, side, side), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        expected = tv(list(images.float() / 255))
        detections = ours(images)
    for det, exp in zip(detections, expected, strict=True):
        assert len(det["boxes"]) == len(exp["boxes"]) > 0
        ours_rows = torch.cat(
            [det["labels"][:, None].float(), det["boxes"], det["scores"][:, None]], 1
        )
        tv_rows = torch.cat(
            [exp["labels"][:, None].float(), exp["boxes"], exp["scores"][:, None]], 1
        )
        torch.testing.assert_close(sorted_rows(ours_rows), sorted_rows(tv_rows), rtol=0, atol=1e-3)


def test_settings_follow_the_torchvision_model():
    tv = torchvision_frozen(384)
    ours = from_torchvision(tv)
    assert ours.roi_heads.num_classes == 5
    assert ours.backbone.num_frozen == 2  # stem and layer1
    assert isinstance(ours.backbone.stem[1], FrozenBatchNorm2d)
    assert ours.rpn.pre_nms_top_n == {True: 2000, False: 1000}
    assert ours.roi_heads.box_coder.weights == (10.0, 10.0, 5.0, 5.0)


def test_every_torchvision_key_has_a_home():
    assert convert_key("backbone.fpn.inner_blocks.3.0.weight") == "fpn.lateral.3.weight"
    assert convert_key("rpn.head.conv.0.0.bias") == "rpn.head.conv.bias"
    with pytest.raises(KeyError):
        convert_key("roi_heads.mask_head.0.weight")
