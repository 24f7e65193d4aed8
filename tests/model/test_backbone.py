from collections import Counter

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.ops import FrozenBatchNorm2d

from frcnn.model.backbone import Backbone
from tests.model.helpers import DispatchedOps


@pytest.mark.parametrize(
    ("depth", "channels"), [(18, [64, 128, 256, 512]), (50, [256, 512, 1024, 2048])]
)
def test_feature_shapes_and_channels(depth, channels):
    backbone = Backbone(depth=depth, frozen="none").eval()
    features = backbone(torch.randn(1, 3, 128, 96))
    assert backbone.out_channels == channels
    assert [tuple(f.shape[1:]) for f in features] == [
        (c, 128 // s, 96 // s) for c, s in zip(channels, (4, 8, 16, 32), strict=True)
    ]


def test_frozen_stages_have_no_gradients_and_stay_in_eval_mode():
    backbone = Backbone(depth=18, norm="bn", frozen="layer2").train()
    for name in ("stem", "layer1", "layer2"):
        stage = getattr(backbone, name)
        assert not any(p.requires_grad for p in stage.parameters())
        assert not any(m.training for m in stage.modules())
    for name in ("layer3", "layer4"):
        assert all(p.requires_grad for p in getattr(backbone, name).parameters())
        assert getattr(backbone, name).training
    stats = backbone.layer1[0].bn1.running_mean.clone()
    backbone(torch.randn(2, 3, 64, 64))
    assert torch.equal(stats, backbone.layer1[0].bn1.running_mean)


def test_frozen_batch_norm_is_used_by_default():
    backbone = Backbone(depth=18)
    assert isinstance(backbone.stem[1], FrozenBatchNorm2d)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())


def random_statistics(module, generator):
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            for name in ("weight", "bias", "running_mean"):
                getattr(m, name).copy_(torch.randn(m.weight.shape, generator=generator) * 0.3)
            m.running_var.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)


def test_frozen_norms_compute_torchvisions_frozen_batch_norm_from_this_passs_buffers():
    """The constants computed for all layers at once give torchvision's own FrozenBatchNorm2d
    outputs; a pass after the buffers changed in place uses the new ones; nothing is kept."""
    g = torch.Generator().manual_seed(0)
    ours = Backbone(depth=50, frozen="layer3").eval()
    reference = torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d).eval()
    x = torch.randn(1, 3, 64, 64, generator=g)
    for _ in range(2):  # new statistics in place, between passes
        with torch.no_grad():
            random_statistics(ours, g)
            names = {"stem.0.": "conv1.", "stem.1.": "bn1."}
            state = {names.get(k[:7], k[:7]) + k[7:]: v for k, v in ours.state_dict().items()}
            loaded = reference.load_state_dict(state, strict=False)
            assert {k.split(".")[0] for k in loaded.missing_keys} == {"fc"}  # all but that
            c2_to_c5 = create_feature_extractor(
                reference, ["layer1", "layer2", "layer3", "layer4"]
            )(x)
            for got, expected in zip(ours(x), c2_to_c5.values(), strict=True):
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert all(m.constants is None for m in ours.modules() if isinstance(m, FrozenBatchNorm2d))
    alone = ours.layer2[0].bn1  # called on its own: computes its constants itself
    features = torch.randn(1, alone.weight.numel(), 4, 4, generator=g)
    torch.testing.assert_close(alone(features), FrozenBatchNorm2d.forward(alone, features))


def test_frozen_norms_cost_a_few_ops_for_all_layers():
    """A ResNet-50 pass computes the 53 frozen norms' constants in one go: one rsqrt, and one
    op per layer to apply them (torchvision's: 9 per layer)."""
    backbone = Backbone(depth=50, frozen="layer3").eval()
    with torch.no_grad(), DispatchedOps() as made:
        backbone(torch.randn(1, 3, 32, 32))
    names = Counter(op.name for op in made.ops if not op.is_view)
    assert names["rsqrt"] == 1 and names["addcmul"] == 53 + 1  # + the shift's


def test_frozen_norms_keep_bfloat16_under_autocast():
    backbone = Backbone(depth=18, frozen="layer2").train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = backbone(torch.randn(2, 3, 64, 64))
    assert all(f.dtype == torch.bfloat16 for f in features)
    sum(f.float().sum() for f in features).backward()
    assert backbone.layer4[0].conv1.weight.grad is not None


def test_checkpointing_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = Backbone(depth=18, frozen="stem").train()
    checkpointed = Backbone(depth=18, frozen="stem", checkpointing=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    for model in (plain, checkpointed):
        sum(f.sum() for f in model(x)).backward()
    torch.testing.assert_close(
        plain.layer3[0].conv1.weight.grad, checkpointed.layer3[0].conv1.weight.grad
    )


def test_weights_from_a_local_file(tmp_path):
    resnet = torchvision.models.resnet18(norm_layer=FrozenBatchNorm2d)
    path = tmp_path / "resnet18.pth"
    torch.save(resnet.state_dict(), path)
    backbone = Backbone(depth=18, weights=str(path))
    assert torch.equal(backbone.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)


def test_missing_weights_file_names_the_key():
    with pytest.raises(FileNotFoundError, match="model.backbone.weights"):
        Backbone(depth=18, weights="/no/such/file.pth")


def test_offline_imagenet_download_says_how_to_use_a_local_file(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(
        torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline
    )
    with pytest.raises(RuntimeError, match="model.backbone.weights=/path"):
        Backbone(depth=18, weights="imagenet")


def test_bad_choices_fail_with_the_key_name_and_the_choices():
    with pytest.raises(ValueError, match="^model.backbone.frozen='layer9': one of none, stem,"):
        Backbone(depth=18, frozen="layer9")
    with pytest.raises(ValueError, match="^model.backbone.depth=42: one of 18, 34, 50, 101$"):
        Backbone(depth=42)
    with pytest.raises(ValueError, match="^model.backbone.norm='gn': one of frozen_bn, bn$"):
        Backbone(depth=18, norm="gn")


def test_checkpointing_counts_each_batch_once_in_trainable_batchnorm():
    torch.manual_seed(0)
    plain = Backbone(depth=18, norm="bn", frozen="stem").train()
    checkpointed = Backbone(depth=18, norm="bn", frozen="stem", checkpointing=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    for model in (plain, checkpointed):
        sum(f.sum() for f in model(x)).backward()
    for (name, expected), actual in zip(
        plain.state_dict().items(), checkpointed.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(actual, expected, msg=name)
    assert checkpointed.layer1[0].bn1.num_batches_tracked == 1
