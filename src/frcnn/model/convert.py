"""Build this project's detector from a torchvision Faster R-CNN, weights included."""

import re
from pathlib import Path

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights
from torchvision.models.resnet import BasicBlock
from torchvision.ops import FrozenBatchNorm2d

from frcnn.coco import COCO_CATEGORY_IDS
from frcnn.model.backbone import FROZEN_CHOICES, download
from frcnn.model.faster_rcnn import IMAGENET_MEAN, IMAGENET_STD, FasterRCNN

# torchvision state-dict key -> ours
KEY_MAP = [
    (r"^backbone\.body\.conv1\.", "backbone.stem.0."),
    (r"^backbone\.body\.bn1\.", "backbone.stem.1."),
    (r"^backbone\.body\.(layer\d)\.", r"backbone.\1."),
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.0\.", r"fpn.lateral.\1."),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.0\.", r"fpn.output.\1."),
    (r"^rpn\.head\.conv\.0\.0\.", "rpn.head.conv."),
    (r"^rpn\.head\.cls_logits\.", "rpn.head.objectness."),
    (r"^rpn\.head\.bbox_pred\.", "rpn.head.deltas."),
    (r"^roi_heads\.box_head\.", "roi_heads.box_head."),
    (r"^roi_heads\.box_predictor\.", "roi_heads.predictor."),
]

PREDICTOR_KEYS = ("roi_heads.predictor.cls_score", "roi_heads.predictor.bbox_pred")

DEPTH_BY_BLOCKS = {(2, 2, 2, 2, True): 18, (3, 4, 6, 3, True): 34, (3, 4, 6, 3, False): 50}
DEPTH_BY_BLOCKS[(3, 4, 23, 3, False)] = 101


def convert_key(key: str) -> str:
    for pattern, replacement in KEY_MAP:
        new_key, found = re.subn(pattern, replacement, key)
        if found:
            return new_key
    raise KeyError(f"no mapping for torchvision parameter {key!r}")


def _backbone_settings(body: nn.Module) -> dict:
    stages = [body.layer1, body.layer2, body.layer3, body.layer4]
    blocks = (*[len(s) for s in stages], isinstance(body.layer1[0], BasicBlock))
    if blocks not in DEPTH_BY_BLOCKS:
        raise ValueError(f"unsupported torchvision ResNet with blocks {blocks}")
    frozen = "none"
    for name, stage in zip(FROZEN_CHOICES[1:], [body.conv1, *stages], strict=True):
        if any(p.requires_grad for p in stage.parameters()):
            break
        frozen = name
    norm = "frozen_bn" if isinstance(body.bn1, FrozenBatchNorm2d) else "bn"
    return {
        "depth": DEPTH_BY_BLOCKS[blocks],
        "norm": norm,
        "norm_eps": body.bn1.eps,  # 0 for torchvision's COCO weights, 1e-5 otherwise
        "weights": None,
        "frozen": frozen,
    }


def torchvision_state_dict(source: str) -> dict:
    """ "coco" (torchvision's COCO-trained fasterrcnn_resnet50_fpn, downloaded) or a file path."""
    if source == "coco":
        return download(FasterRCNN_ResNet50_FPN_Weights.COCO_V1, "init_weights")
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"init_weights={source!r}: no such file (or use 'coco')")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_torchvision_weights(model: FasterRCNN, state_dict: dict) -> list[str]:
    """Load a torchvision Faster R-CNN state dict into `model`, e.g. to fine-tune from COCO.

    A 91-way COCO predictor loaded into an 80-class model keeps the rows of the 80 used
    categories (COCO_CATEGORY_IDS), so the model detects COCO from the start. Other tensors
    whose shape differs (a predictor for other classes) are left as initialised. Returns the
    names of the parameters left out.
    """
    own = model.state_dict()
    converted = {convert_key(k): v for k, v in state_dict.items()}
    if (
        model.roi_heads.num_classes == 80
        and converted[PREDICTOR_KEYS[0] + ".weight"].shape[0] == 91
    ):
        rows = torch.tensor([0, *COCO_CATEGORY_IDS])
        for key in PREDICTOR_KEYS:
            for kind in ("weight", "bias"):
                value = converted[f"{key}.{kind}"]
                per_class = value.view(91, -1, *value.shape[1:])  # (classes, 1 or 4, ...)
                converted[f"{key}.{kind}"] = per_class[rows].reshape(-1, *value.shape[1:])
    loadable = {k: v for k, v in converted.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(own) - set(loadable))
    model.load_state_dict(loadable, strict=False)
    return skipped


def from_torchvision(tv_model: nn.Module) -> FasterRCNN:
    """A `FasterRCNN` with the settings and weights of a torchvision `fasterrcnn_resnet*_fpn`.

    torchvision counts the background in `num_classes` (91 for COCO); this project does not
    (90). In eval mode both give the same detections on inputs whose sides are multiples of 64
    when torchvision's transform is a no-op (min_size = max_size = the input side), also for
    letterboxed images when this detector is given their `image_sizes`.
    """
    transform, rpn, roi = tv_model.transform, tv_model.rpn, tv_model.roi_heads
    if tuple(transform.image_mean) != IMAGENET_MEAN or tuple(transform.image_std) != IMAGENET_STD:
        raise ValueError("only torchvision models normalised with ImageNet statistics convert")
    pool_size = roi.box_roi_pool.output_size
    model = FasterRCNN(
        num_classes=roi.box_predictor.cls_score.out_features - 1,
        backbone=_backbone_settings(tv_model.backbone.body),
        fpn_channels=tv_model.backbone.out_channels,
        anchors={
            "sizes": rpn.anchor_generator.sizes,
            "aspect_ratios": rpn.anchor_generator.aspect_ratios,
        },
        rpn={
            "pre_nms_top_n_train": rpn._pre_nms_top_n["training"],
            "pre_nms_top_n_test": rpn._pre_nms_top_n["testing"],
            "post_nms_top_n_train": rpn._post_nms_top_n["training"],
            "post_nms_top_n_test": rpn._post_nms_top_n["testing"],
            "nms_thresh": rpn.nms_thresh,
            "fg_iou_thresh": rpn.proposal_matcher.high_threshold,
            "bg_iou_thresh": rpn.proposal_matcher.low_threshold,
            "batch_size_per_image": rpn.fg_bg_sampler.batch_size_per_image,
            "positive_fraction": rpn.fg_bg_sampler.positive_fraction,
            "min_size": rpn.min_size,
            "score_thresh": rpn.score_thresh,
            "box_coder_weights": rpn.box_coder.weights,
        },
        roi_heads={
            "output_size": pool_size[0] if isinstance(pool_size, (tuple, list)) else pool_size,
            "sampling_ratio": roi.box_roi_pool.sampling_ratio,
            "representation_size": roi.box_head.fc6.out_features,
            "fg_iou_thresh": roi.proposal_matcher.high_threshold,
            "bg_iou_thresh": roi.proposal_matcher.low_threshold,
            "batch_size_per_image": roi.fg_bg_sampler.batch_size_per_image,
            "positive_fraction": roi.fg_bg_sampler.positive_fraction,
            "box_coder_weights": roi.box_coder.weights,
            "score_thresh": roi.score_thresh,
            "nms_thresh": roi.nms_thresh,
            "detections_per_img": roi.detections_per_img,
        },
    )
    state = {convert_key(k): v for k, v in tv_model.state_dict().items()}
    model.load_state_dict(state)
    return model
