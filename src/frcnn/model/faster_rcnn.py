"""The detector: images -> four-loss dict (training) or detections (eval)."""

import logging

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from frcnn.boxes import NMS_CALLS, triton_missing
from frcnn.checks import check_number
from frcnn.model.anchors import AnchorGenerator
from frcnn.model.backbone import Backbone
from frcnn.model.fpn import FPN
from frcnn.model.matching import ROI_SAMPLING, RPN_SAMPLING, Sampling
from frcnn.model.roi_heads import RoIHeads
from frcnn.model.rpn import RPN
from frcnn.model.tta import TTA, merge, mirror, unmirror
from frcnn.structures import Detections, pad_targets

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FasterRCNN(nn.Module):
    """ResNet-FPN Faster R-CNN.

    Args:
        num_classes: object classes (labels 1..num_classes; 0 is background).
        backbone: keyword arguments of `Backbone` (depth, norm, weights, frozen, checkpointing).
        fpn_channels: channels of P2..P6.
        anchors: keyword arguments of `AnchorGenerator` (sizes, aspect_ratios, strides, offset).
        rpn: keyword arguments of `RPN` (counts, thresholds, sampler, box-coder weights).
        roi_heads: keyword arguments of `RoIHeads` (pooling, matcher, sampler, post-processing).
        nms_calls: "image" (one torchvision NMS call per image), "batch" (one for the batch)
            or "triton" (on a GPU, one Triton kernel for every row, without a host wait), in
            the RPN and in post-processing: the same boxes kept, what a GPU runs faster differs.
            "auto": "triton" where Triton can run it (`triton_missing`), else "image".
        tta: test-time augmentation of the eval-mode detections (`forward`,
            `forward_with_losses`): "none", or "flip": each image and its mirror image, merged
            by the ROI heads' NMS per class and top-K (frcnn.model.tta). `detect` (the ONNX
            export's graph) never uses it.

    `forward(images, targets=None, image_sizes=None)`: images are (B, 3, H, W), uint8 in 0..255
    or float in 0..1, or a list of (3, H, W) images of any sizes (`as_batch`); the model
    normalises them with ImageNet statistics. `image_sizes` (B, 2) gives the (height, width) of
    each image's content, top-left, for letterboxed inputs (None: the whole input): the padding
    is set to 0 after normalisation and proposals and detections are clipped to the content, so
    none lies in the padding. In training mode it returns {"rpn_cls", "rpn_box", "roi_cls",
    "roi_box"}; in eval mode a list of B dicts with "boxes" (D, 4) xyxy in input pixels,
    "scores" (D,) and "labels" (D,).
    """

    def __init__(
        self,
        num_classes: int = 80,
        backbone: dict | None = None,
        fpn_channels: int = 256,
        anchors: dict | None = None,
        rpn: dict | None = None,
        roi_heads: dict | None = None,
        nms_calls: str = "auto",
        tta: str = "none",
    ):
        super().__init__()
        if nms_calls not in NMS_CALLS:
            raise ValueError(f"model.nms_calls={nms_calls!r}: one of {', '.join(NMS_CALLS)}")
        if nms_calls in ("auto", "triton"):
            missing = triton_missing()
            if missing and nms_calls == "triton":  # (asked for: say why it is not used)
                log.warning(
                    "model.nms_calls=triton: %s; NMS runs as torchvision's, a call per image "
                    "(nms_calls=image): the same boxes, more host waits on a GPU", missing
                )  # fmt: skip
            nms_calls = "image" if missing else "triton"
        if tta not in TTA:
            raise ValueError(f"model.tta={tta!r}: one of {', '.join(TTA)}")
        self.num_classes, self.tta, self.nms_calls = num_classes, tta, nms_calls
        check_number("model.num_classes", num_classes, 1, integer=True)
        check_number("model.fpn_channels", fpn_channels, 1, integer=True)
        self.backbone = Backbone(**(backbone or {}))
        self.fpn = FPN(self.backbone.out_channels, fpn_channels)
        self.anchor_generator = AnchorGenerator(**(anchors or {}))
        if len(self.anchor_generator.strides) != self.fpn.num_levels:
            raise ValueError(
                f"model.anchors: {len(self.anchor_generator.strides)} levels of sizes, "
                f"aspect_ratios and strides, but the FPN has {self.fpn.num_levels} (P2..P6): "
                "give one entry per level"
            )
        num_anchors = self.anchor_generator.num_anchors_per_location()
        if len(set(num_anchors)) != 1:
            raise ValueError(
                "anchors: the RPN head is shared by all levels, so every level needs the same "
                f"number of sizes x aspect ratios; got {num_anchors}"
            )
        rpn, roi_heads = dict(rpn or {}), dict(roi_heads or {})
        rpn_sampling = Sampling.take(rpn, "rpn", RPN_SAMPLING)
        self.rpn = RPN(
            fpn_channels, num_anchors[0], sampling=rpn_sampling, nms_calls=nms_calls, **rpn
        )
        roi_strides = self.anchor_generator.strides[:-1]  # P2..P5; P6 serves the RPN only
        roi_sampling = Sampling.take(roi_heads, "roi_heads", ROI_SAMPLING)
        self.roi_heads = RoIHeads(
            num_classes,
            fpn_channels,
            sampling=roi_sampling,
            nms_calls=nms_calls,
            **{"strides": roi_strides, **roi_heads},
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[:, None, None], persistent=False)

    def normalize(self, images: Tensor, image_sizes: Tensor | None = None) -> Tensor:
        """uint8 (0..255) or float (0..1) images -> ImageNet-normalised float32, or under
        autocast in its dtype (the first convolution would cast them to it anyway).

        With `image_sizes` (B, 2), everything right of and below each image's content is 0 (the
        mean colour), whatever the padding held: as torchvision pads its normalised batches.
        """
        kind = images.device.type
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else torch.float32
        if images.dtype == torch.uint8:
            images = images.to(dtype) / 255
        x = (images.to(dtype) - self.mean.to(dtype)) / self.std.to(dtype)
        if image_sizes is None:
            return x
        rows = torch.arange(x.shape[-2], device=x.device)[:, None]
        cols = torch.arange(x.shape[-1], device=x.device)
        sizes = image_sizes.to(x.device)[:, :, None, None]
        inside = (rows < sizes[:, 0]) & (cols < sizes[:, 1])  # (B, H, W)
        return x * inside[:, None]

    def forward(
        self,
        images: Tensor,
        targets: list[dict[str, Tensor]] | None = None,
        image_sizes: Tensor | None = None,
    ):
        images, image_sizes = as_batch(images, image_sizes, targets)
        if self.training:
            if targets is None:
                raise ValueError("FasterRCNN in training mode needs targets")
            return self._run(images, targets, image_sizes, detect=False)[0]
        return self._augmented(images, image_sizes, self.detect(images, image_sizes)).per_image()

    def detect(self, images: Tensor, image_sizes: Tensor | None = None) -> Detections:
        """Inference with fixed-shape outputs: Detections (B, K), padded (what ONNX exports)."""
        images, image_sizes = as_batch(images, image_sizes)
        return self._run(images, None, image_sizes, detect=True)[1]

    def forward_with_losses(
        self, images: Tensor, targets: list[dict[str, Tensor]], image_sizes: Tensor | None = None
    ):
        """One pass that returns (losses, detections), for validation.

        Call in eval mode: proposals use the test-time counts; the losses are computed on
        them as in training (with fresh random samples).
        """
        images, image_sizes = as_batch(images, image_sizes, targets)
        losses, detections = self._run(images, targets, image_sizes, detect=True)
        return losses, self._augmented(images, image_sizes, detections).per_image()

    def _augmented(self, images: Tensor, image_sizes: Tensor | None, detections: Detections):
        """`detections` of `images`, merged with those of their mirror images under tta=flip."""
        if self.tta == "none":
            return detections
        sizes = full_sizes(images) if image_sizes is None else image_sizes.to(images.device)
        mirrored = self.detect(mirror(images, sizes), sizes)
        valid = mirrored.valid[..., None]
        mirrored = mirrored._replace(boxes=torch.where(valid, unmirror(mirrored.boxes, sizes), 0.0))
        heads = self.roi_heads
        return merge(detections, mirrored, self.num_classes, heads.nms_thresh, self.nms_calls)

    def features(self, images: Tensor, image_sizes: Tensor | None = None) -> list[Tensor]:
        """(B, 3, S, S) images (padding beyond `image_sizes` zeroed) -> [P2..P6]."""
        with record_function("frcnn.features"):
            return self.fpn(self.backbone(self.normalize(images, image_sizes)))

    def anchors(self, features: list[Tensor]) -> list[Tensor]:
        """[P_l (B, C, H_l, W_l)] -> anchors (H_l * W_l * A_l, 4) per level (cached)."""
        return self.anchor_generator([tuple(f.shape[-2:]) for f in features], features[0].device)

    def _run(self, images: Tensor, targets, image_sizes: Tensor | None, detect: bool):
        """The stages in order; each is a method of its own (figures and benchmarks call them,
        and `bench/detector.py --breakdown` times them by their record_function labels)."""
        if image_sizes is None:
            image_sizes = full_sizes(images)
        image_sizes = image_sizes.to(images.device)
        features = self.features(images, image_sizes)
        gt = None if targets is None else pad_targets(targets, images.device)
        proposals, losses = self.rpn(features, self.anchors(features), image_sizes, gt)
        roi_features = features[: len(self.roi_heads.strides)]
        if gt is not None:
            losses.update(self.roi_heads.losses(roi_features, proposals, gt))
        detections = self.roi_heads.detect(roi_features, proposals, image_sizes) if detect else None
        return losses, detections


def full_sizes(images: Tensor) -> Tensor:
    """(B, 2) int64 (height, width) of the whole input for each image: no padding."""
    height = torch.full((images.shape[0], 1), images.shape[-2], device=images.device)
    width = torch.full((images.shape[0], 1), images.shape[-1], device=images.device)
    return torch.cat([height, width], dim=1)


def as_batch(images, image_sizes=None, targets=None) -> tuple[Tensor, Tensor | None]:
    """The detector's inputs as one batch, checked by their shapes and types only (values
    would cost a host wait): images (B, 3, H, W) uint8 (0..255) or float (0..1), or a list of
    B (3, H, W) images of any sizes, padded at the right and bottom into one batch whose
    `image_sizes` (B, 2) are their (height, width); one target per image."""
    if isinstance(images, (list, tuple)):
        if image_sizes is not None:
            raise ValueError(
                "image_sizes: a list of images brings its own; give image_sizes with a "
                "(B, 3, H, W) batch"
            )
        for i, image in enumerate(images):
            check_images(f"images[{i}]", image, "(3, H, W)", 3)
        if not images or len({image.dtype for image in images}) > 1:
            raise ValueError(
                f"images: a list of one or more images of one type; got "
                f"{[image.dtype for image in images]}"
            )
        sizes = [image.shape[-2:] for image in images]
        height, width = (max(side) for side in zip(*sizes, strict=True))
        pad = [
            nn.functional.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2])) for x in images
        ]
        images = torch.stack(pad)
        image_sizes = torch.tensor(sizes, device=images.device)
    else:
        check_images("images", images, "(B, 3, H, W)", 4)
        if images.shape[0] == 0:
            raise ValueError("images: an empty batch")
    if image_sizes is not None:
        image_sizes = torch.as_tensor(image_sizes)
        if image_sizes.shape != (images.shape[0], 2):
            raise ValueError(
                f"image_sizes: (B, 2), the (height, width) of each of the {images.shape[0]} "
                f"images; got shape {tuple(image_sizes.shape)}"
            )
    if targets is not None and len(targets) != images.shape[0]:
        raise ValueError(f"targets: one per image, {images.shape[0]}; got {len(targets)}")
    return images, image_sizes


def check_images(name: str, images, shape: str, ndim: int) -> None:
    """Refuses what is not a `shape` tensor of uint8 or float RGB, saying how to mend it."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{name}: a {shape} tensor; got {type(images).__name__}")
    got = f"got {tuple(images.shape)} {images.dtype}"
    if images.ndim != ndim or images.shape[-3] != 3:
        hint = ""
        if images.ndim == 3 and ndim == 4:
            hint = ": one image is images[None]"
        elif images.ndim == ndim and images.shape[-1] == 3:
            hint = ": channels last? images.movedim(-1, -3)"
        elif images.ndim == ndim and images.shape[-3] == 1:
            hint = f": gray? images.expand({'-1, ' * (ndim - 3)}3, -1, -1)"
        raise ValueError(f"{name}: {shape} RGB; {got}{hint}")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(
            f"{name}: uint8 (0..255) or float (0..1); {got}: images.to(torch.uint8) if its "
            "values are 0..255"
        )
