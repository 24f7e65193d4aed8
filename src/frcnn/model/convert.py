"""Build this project's detector from a torchvision Faster R-CNN, weights included."""

import re
from typing import NamedTuple

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights
from torchvision.models.resnet import BasicBlock
from torchvision.ops import FrozenBatchNorm2d

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


# the class of each row of torchvision's COCO predictor (91: background, 80 classes, 10 "N/A")
TORCHVISION_COCO_NAMES = tuple(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
UNNAMED = ("__background__", "N/A")


def torchvision_coco_weights() -> dict:
    """torchvision's COCO-trained fasterrcnn_resnet50_fpn state dict (37.0 box AP, downloaded)."""
    return download(FasterRCNN_ResNet50_FPN_Weights.COCO_V1, "init_weights")


def is_torchvision_state_dict(state) -> bool:
    """Whether `state` is a torchvision Faster R-CNN state dict (its keys, tensor values)."""
    return (
        isinstance(state, dict)
        and any(str(k).startswith("backbone.body.") for k in state)
        and all(isinstance(v, torch.Tensor) for v in state.values())
    )


def from_torchvision_keys(state: dict) -> dict:
    """A torchvision Faster R-CNN state dict with this project's keys."""
    return {convert_key(k): v for k, v in state.items()}


def torchvision_class_names(state: dict) -> tuple[str, ...] | None:
    """The class of each predictor row of a torchvision state dict (its own keys or this
    project's): COCO's 91 rows; None where the file does not say (another row count)."""
    rows = [v.shape[0] for k, v in state.items() if k.endswith("cls_score.weight")]
    return TORCHVISION_COCO_NAMES if rows == [len(TORCHVISION_COCO_NAMES)] else None


class Loaded(NamedTuple):
    """What `load_weights` did: the tensors it loaded (names), the classes whose predictor
    rows it carried over by name and those whose rows it left as initialised (new classes),
    and this model's tensors it left as initialised."""

    loaded: list[str]
    carried: list[str]
    new: list[str]
    left_out: list[str]


def load_weights(
    model: FasterRCNN,
    state: dict,
    source_names: list[str] | tuple[str, ...] | None = None,
    class_names: list[str] | None = None,
) -> Loaded:
    """Load `state` (this project's keys) into `model`: every tensor whose name and shape match,
    except the box predictor's, which is carried over class by class where both sides name their
    classes: `source_names[r]` is the class of the state's row r (row 0 the background),
    `class_names[i]` that of the model's label i + 1. The background row and the rows of the
    classes named in both (e.g. "person", "car"; case and spaces aside) go to their new labels;
    the other rows stay as initialised. Where either side names no classes, the predictor loads
    only where its shape matches (the same classes assumed, as a plain state dict is used)."""
    own = model.state_dict()
    loadable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    carried, new = [], []
    if source_names is not None and class_names is not None:
        pairs = class_rows(source_names, class_names)
        for key in PREDICTOR_KEYS:
            for kind in ("weight", "bias"):
                name = f"{key}.{kind}"
                loadable.pop(name, None)
                rows = carry_rows(state.get(name), own[name], pairs, len(source_names))
                if rows is not None:
                    loadable[name] = rows
        if all(f"{key}.weight" in loadable for key in PREDICTOR_KEYS):  # else: another width
            carried = [class_names[label - 1] for _, label in pairs[1:]]
        new = [name for name in class_names if name not in carried]
    model.load_state_dict(loadable, strict=False)
    return Loaded(sorted(loadable), carried, new, sorted(set(own) - set(loadable)))


def class_rows(source_names, class_names) -> list[tuple[int, int]]:
    """(source row, label) pairs: the background (0, 0), then each of `class_names` (labels
    1..C) found among `source_names` (rows 1.., the unnamed "N/A" rows left out)."""
    rows = {name_key(n): r for r, n in enumerate(source_names) if r > 0 and n not in UNNAMED}
    named = [(rows.get(name_key(name)), label) for label, name in enumerate(class_names, 1)]
    return [(0, 0), *((row, label) for row, label in named if row is not None)]


def name_key(name) -> str:
    """A class name as names are compared: "Traffic  Light" is "traffic light"."""
    return " ".join(str(name).lower().split())


def check_convertible(tv_model) -> None:
    """Refuses what is not built as `fasterrcnn_resnet50_fpn` (its ResNet-FPN backbone, RPN
    head and two-layer box head, on a ResNet-18 to 101), naming what it is."""
    from torchvision.models import detection

    body = getattr(getattr(tv_model, "backbone", None), "body", None)
    head = getattr(getattr(tv_model, "roi_heads", None), "box_head", None)
    other = (detection.MaskRCNN, detection.KeypointRCNN)  # (Faster R-CNNs with more heads)
    what = type(tv_model).__name__
    if isinstance(tv_model, dict):
        what = "a state dict: init_weights=<its file> trains from it"
    elif isinstance(tv_model, detection.FasterRCNN) and not isinstance(tv_model, other):
        if not isinstance(head, detection.faster_rcnn.TwoMLPHead):
            what += f" with a {type(head).__name__} box head"
        elif not hasattr(body, "layer4"):
            what += " on a backbone without a ResNet's stages (layer1..layer4)"
        else:
            return
    raise TypeError(
        "from_torchvision: a torchvision Faster R-CNN built as fasterrcnn_resnet50_fpn (a "
        "ResNet-FPN backbone and its TwoMLPHead box head), not _v2's, MobileNet's, RetinaNet, "
        f"Mask or Keypoint R-CNN; got {what}"
    )


def carry_rows(value, own, pairs, num_rows: int):
    """`own` (a predictor tensor: rows of 1 or 4 per class) with `value`'s rows of each
    (source row, label) pair copied in; None where they do not fit (another width)."""
    if value is None or value.shape[1:] != own.shape[1:] or value.shape[0] % num_rows:
        return None
    source = value.reshape(num_rows, -1, *value.shape[1:])
    target = own.reshape(-1, source.shape[1], *own.shape[1:]).clone()
    rows, labels = zip(*pairs, strict=True)
    target[list(labels)] = source[list(rows)]
    return target.reshape(own.shape)


def from_torchvision(tv_model: nn.Module) -> FasterRCNN:
    """A `FasterRCNN` with the settings and weights of a torchvision `fasterrcnn_resnet*_fpn`.

    torchvision counts the background in `num_classes` (91 for COCO); this project does not
    (90). In eval mode both give the same detections on inputs whose sides are multiples of 64
    when torchvision's transform is a no-op (min_size = max_size = the input side), also for
    letterboxed images when this detector is given their `image_sizes`.
    """
    check_convertible(tv_model)
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
