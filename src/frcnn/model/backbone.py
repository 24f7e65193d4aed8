"""ResNet body returning C2..C5, with frozen stages and optional activation checkpointing."""

import functools
from contextlib import contextmanager, nullcontext

import torch
import torchvision
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchvision import ops

from frcnn.checks import check_flag, check_number, path_of

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
FROZEN_CHOICES = ("none", *STAGES)
DEPTHS = {18: "resnet18", 34: "resnet34", 50: "resnet50", 101: "resnet101"}
NORMS = ("frozen_bn", "bn")


def _imagenet_weights(arch: str):
    """torchvision's ImageNet weights enum for `arch` (V1, the weights detection models use)."""
    enum = torchvision.models.get_model_weights(arch)
    return enum.IMAGENET1K_V1


def download(weights, key: str) -> dict:
    """The state dict of a torchvision weights enum entry, downloaded (or from torch's cache);
    offline, a message that says which file to fetch and which config `key` takes its path."""
    try:
        return weights.get_state_dict(progress=True)
    except Exception as err:  # any network or cache failure
        raise RuntimeError(
            f"Could not download {weights} ({weights.url}): {err}. Offline, download that file "
            f"elsewhere and set {key}=/path/to/the/file.pth"
        ) from err


class FrozenBatchNorm2d(ops.FrozenBatchNorm2d):
    """torchvision's FrozenBatchNorm2d (the same buffers and state dict), x * scale + shift
    computed in the input's dtype: under autocast a frozen stage's output stays in low
    precision (torchvision's multiplies by its float32 buffers, so every C2..C5 activation
    comes out float32 and the next convolution casts it back).

    `Backbone` hands every layer its scale and shift (`constants`), computed for all of them
    at once before its forward pass (`affine_constants`): a dozen ops for the 53 layers of a
    ResNet-50 rather than 9 for each. A layer called on its own computes its own."""

    constants: tuple[Tensor, Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.constants or affine_constants([self], x.dtype)[0]
        if scale.dtype != x.dtype:  # an input not in the dtype the backbone expected
            scale, shift = scale.to(x.dtype), shift.to(x.dtype)
        return torch.addcmul(shift, x, scale)


def affine_constants(norms: list[FrozenBatchNorm2d], dtype: torch.dtype) -> list:
    """Each frozen norm's (scale, shift), (C, 1, 1) in `dtype`: scale = weight / sqrt(running
    variance + eps), shift = bias - running mean x scale, in float32 for all of `norms` at once
    (their buffers concatenated: a few ops however many layers), then cast once."""
    constants = {}
    for eps in {norm.eps for norm in norms}:  # one value, but for a hand-edited model
        group = [norm for norm in norms if norm.eps == eps]
        weight, bias, mean, var = (
            torch.cat([getattr(norm, name) for norm in group]) if len(group) > 1 else
            getattr(group[0], name) for name in ("weight", "bias", "running_mean", "running_var")
        )  # fmt: skip
        scale = weight * (var + eps).rsqrt()
        shift = torch.addcmul(bias, mean, scale, value=-1)
        sizes = [norm.weight.numel() for norm in group]
        pairs = zip(scale.to(dtype).split(sizes), shift.to(dtype).split(sizes), strict=True)
        for norm, (s, b) in zip(group, pairs, strict=True):
            constants[norm] = (s[:, None, None], b[:, None, None])
    return [constants[norm] for norm in norms]


@contextmanager
def frozen_norm_constants(module: nn.Module, dtype: torch.dtype):
    """For one forward pass of `module`: its frozen norms' constants, computed at once."""
    norms = [m for m in module.modules() if isinstance(m, FrozenBatchNorm2d)]
    for norm, constants in zip(norms, affine_constants(norms, dtype), strict=True):
        norm.constants = constants
    try:
        yield
    finally:  # computed from this pass's buffers: never kept for the next
        for norm in norms:
            norm.constants = None


def build_resnet(depth: int, norm: str, weights: str | None, norm_eps: float = 1e-5) -> nn.Module:
    """A torchvision ResNet with `norm` layers (epsilon `norm_eps`) and weights None,
    "imagenet" or a local file."""
    if depth not in DEPTHS:
        raise ValueError(f"model.backbone.depth={depth!r}: one of {', '.join(map(str, DEPTHS))}")
    if norm not in NORMS:
        raise ValueError(f"model.backbone.norm={norm!r}: one of {', '.join(NORMS)}")
    check_number("model.backbone.norm_eps", norm_eps, 0)
    if norm == "bn" and norm_eps == 0:  # (it divides by sqrt(var + eps) of a batch: may be 0)
        raise ValueError(
            "model.backbone.norm_eps=0: trained BatchNorm (model.backbone.norm=bn) needs it "
            "above 0; 0 is for frozen_bn (torchvision's COCO weights)"
        )
    arch = DEPTHS[depth]
    norm_layer = functools.partial(
        FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d, eps=norm_eps
    )
    resnet = torchvision.models.get_model(arch, weights=None, norm_layer=norm_layer)
    if weights is None:
        return resnet
    if weights == "imagenet":
        state = download(_imagenet_weights(arch), "model.backbone.weights")
    else:
        path = path_of("model.backbone.weights", weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"model.backbone.weights={weights!r}: no such file. Use 'imagenet', null, "
                "or the path of a torchvision ResNet state dict."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
    resnet.load_state_dict(state)
    return resnet


@contextmanager
def statistics_kept(module: nn.Module):
    """Restores the running statistics of `module`'s BatchNorm layers on exit.

    Activation checkpointing runs a stage's forward again in the backward pass; without this,
    trainable BatchNorm would count every batch twice in its running mean and variance.
    """
    norms = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    saved = [
        [m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()]
        for m in norms
    ]
    try:
        yield
    finally:  # also when the recomputation stops early, as it does once it has what it needs
        for m, (mean, var, count) in zip(norms, saved, strict=True):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


class Backbone(nn.Module):
    """ResNet stem and stages -> C2..C5 feature maps at strides 4, 8, 16, 32.

    `frozen` names the last stage whose parameters are frozen ("none", "stem", "layer1", ...);
    frozen stages also stay in eval mode, so trainable BatchNorm there never updates its
    statistics. `checkpointing` recomputes the activations of trainable stages in the backward
    pass instead of storing them (less memory, about a third more compute for those stages).
    `norm_eps` is the normalisation layers' epsilon: 1e-5 as in torchvision's ResNets; its
    COCO-trained Faster R-CNN weights are used with 0.
    """

    def __init__(
        self,
        depth: int = 50,
        norm: str = "frozen_bn",
        weights: str | None = None,
        frozen: str = "layer1",
        checkpointing: bool = False,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if frozen not in FROZEN_CHOICES:
            raise ValueError(
                f"model.backbone.frozen={frozen!r}: one of {', '.join(FROZEN_CHOICES)}"
            )
        check_flag("model.backbone.checkpointing", checkpointing)
        resnet = build_resnet(depth, norm, weights, norm_eps)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.layer1, self.layer2 = resnet.layer1, resnet.layer2
        self.layer3, self.layer4 = resnet.layer3, resnet.layer4
        self.out_channels = [
            stage[-1].conv3.out_channels
            if hasattr(stage[-1], "conv3")
            else stage[-1].conv2.out_channels
            for stage in (self.layer1, self.layer2, self.layer3, self.layer4)
        ]
        self.num_frozen = FROZEN_CHOICES.index(frozen)  # 0 = none, 1 = stem, ... 5 = layer4
        self.checkpointing = checkpointing
        for stage in self._stages()[: self.num_frozen]:
            stage.requires_grad_(False)

    def _stages(self) -> list[nn.Module]:
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def train(self, mode: bool = True):
        super().train(mode)
        for stage in self._stages()[: self.num_frozen]:
            stage.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, 3, H, W) normalised images -> [C2, C3, C4, C5]."""
        features = []
        device = x.device.type  # the convolutions' output dtype, which the norms take
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        with frozen_norm_constants(self, dtype):
            for i, stage in enumerate(self._stages()):
                if self.checkpointing and self.training and i >= self.num_frozen:
                    x = checkpoint(
                        stage,
                        x,
                        use_reentrant=False,
                        context_fn=lambda stage=stage: (nullcontext(), statistics_kept(stage)),
                    )
                else:
                    x = stage(x)
                if i > 0:
                    features.append(x)
        return features
