"""Pictures of what each stage does: anchors, objectness, proposals, assignments, detections.

Each function takes a `FasterRCNN`, one uint8 (3, S, S) input image, the (height, width) of its
content (int64 (2,); the rest is letterbox padding, which the detector ignores as in training
and inference) and, where needed, its target (boxes in input pixels, labels), and returns a
matplotlib Figure of a fixed size.
"""

import matplotlib
import torch
from matplotlib.patches import Rectangle

from frcnn.boxes import clip_boxes
from frcnn.checks import check_number
from frcnn.model.matching import IGNORED, NEGATIVE, training_labels
from frcnn.structures import counted, pad_targets
from frcnn.visualization.canvas import figure
from frcnn.visualization.drawing import draw_detections

SIZES = {  # inches at canvas.DPI
    "anchors": (7, 7),
    "objectness": (16, 3.6),
    "proposals": (12, 6.4),
    "assignments": (12, 6.4),
    "detections": (7, 7),
}
WHAT = tuple(SIZES)


def _figure(what: str, ncols: int = 1, nrows: int = 1):
    return figure(*SIZES[what], ncols=ncols, nrows=nrows, axes=False)


def _show(ax, image, title: str):
    ax.imshow(image.permute(1, 2, 0).cpu().numpy())
    ax.set_title(title, fontsize=10)


def _boxes(ax, boxes, colour, width=1.0, alpha=1.0):
    for x0, y0, x1, y1 in boxes.tolist():
        ax.add_patch(
            Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colour, lw=width, alpha=alpha)
        )


@torch.no_grad()
def rpn_outputs(model, image, size):
    """-> FPN features, anchors per level, objectness logits (N,) and deltas (N, 4): the
    detector's own first stages, for one image with content `size`."""
    device = next(model.parameters()).device
    features = model.features(image[None].to(device), size[None].to(device))
    logits, deltas = model.rpn.outputs(features)
    return features, model.anchors(features), logits[0], deltas[0]


def anchors_figure(model, image, size, level: int = 0, num_locations: int = 3):
    """The anchor centres of one FPN level, and all anchor shapes at a few locations."""
    fig, (ax,) = _figure("anchors")
    _, anchors, _, _ = rpn_outputs(model, image, size)
    per_location = model.anchor_generator.num_anchors_per_location()[level]
    level_anchors = anchors[level].cpu()
    centres = ((level_anchors[:, :2] + level_anchors[:, 2:]) / 2)[::per_location]
    stride = model.anchor_generator.strides[level]
    _show(
        ax,
        image,
        f"P{level + 2}: {len(centres)} locations x {per_location} anchors, stride {stride}",
    )
    ax.scatter(centres[:, 0], centres[:, 1], s=1, c="white", alpha=0.6)
    side = image.shape[-1]
    for i, fraction in enumerate(torch.linspace(0.25, 0.75, num_locations).tolist()):
        target = torch.tensor([fraction * side, fraction * side])
        nearest = int(((centres - target) ** 2).sum(1).argmin())
        shapes = level_anchors[nearest * per_location : (nearest + 1) * per_location]
        _boxes(ax, shapes, matplotlib.colormaps["tab10"](i), width=1.5)
    ax.set_xlim(-side * 0.1, side * 1.1)
    ax.set_ylim(side * 1.1, -side * 0.1)
    return fig


def objectness_figure(model, image, size):
    """Per-level maps of the best objectness per location, and the histogram of all scores."""
    levels = len(model.anchor_generator.strides)
    fig, axes = _figure("objectness", ncols=levels + 1)
    axes = list(axes)
    features, _, logits, _ = rpn_outputs(model, image, size)
    scores = torch.sigmoid(logits).cpu()
    start = 0
    for level, (ax, feature) in enumerate(zip(axes, features, strict=False)):
        height, width = feature.shape[-2:]
        per_location = model.anchor_generator.num_anchors_per_location()[level]
        count = height * width * per_location
        heat = scores[start : start + count].view(height, width, per_location).amax(-1)
        start += count
        ax.imshow(image.permute(1, 2, 0).cpu().numpy(), extent=(0, 1, 1, 0))
        ax.imshow(heat.numpy(), cmap="magma", alpha=0.6, vmin=0, vmax=1, extent=(0, 1, 1, 0))
        ax.set_title(f"P{level + 2} ({height}x{width})", fontsize=10)
    hist = axes[-1]
    hist.axis("on")
    hist.hist(scores.numpy(), bins=50, range=(0, 1), log=True, color="tab:purple")
    hist.set_title("objectness of all anchors", fontsize=10)
    hist.set_xlabel("score")
    return fig


def proposals_figure(model, image, size, top_n: int = 50):
    """The top-N proposals by objectness before NMS, and the top-N that NMS keeps (both
    clipped to the image's content, as the RPN clips them)."""
    fig, (before, after) = _figure("proposals", ncols=2)
    _, anchors, logits, deltas = rpn_outputs(model, image, size)
    all_anchors = torch.cat(anchors)
    top = logits.topk(min(top_n, len(logits))).indices
    raw = clip_boxes(model.rpn.box_coder.decode(deltas[top], all_anchors[top]), *size.tolist())
    sizes = [len(a) for a in anchors]
    with torch.no_grad():
        kept, valid = model.rpn.select_proposals(
            logits[None],
            deltas[None],
            all_anchors,
            sizes,
            size[None].to(logits.device),
        )
    kept = kept[0][valid[0]][:top_n]
    _show(before, image, f"top {len(raw)} before NMS")
    _boxes(before, raw.cpu(), "yellow", alpha=0.7)
    _show(after, image, f"top {len(kept)} after NMS (IoU {model.rpn.nms_thresh})")
    _boxes(after, kept.cpu(), "cyan", alpha=0.7)
    return fig


def assignments_figure(model, image, size, target, num_negatives: int = 40):
    """RPN: positive / sampled negative / ignored anchors; ROI heads: sampled proposals."""
    fig, (rpn_ax, roi_ax) = _figure("assignments", ncols=2)
    _, anchors, logits, deltas = rpn_outputs(model, image, size)
    device = logits.device
    gt = pad_targets([target], device)
    rpn = model.rpn
    all_anchors = torch.cat(anchors)
    matched = rpn.sampling.match(gt, all_anchors, True)[0]
    labels = training_labels(matched)
    sampled = rpn.sampling.sample(labels[None])[0]
    centres = ((all_anchors[:, :2] + all_anchors[:, 2:]) / 2).cpu()
    ignored = (labels == IGNORED).cpu()
    negatives = (sampled & (labels == NEGATIVE)).nonzero().squeeze(1).cpu()[:num_negatives]
    positives = (sampled & (labels == 1)).cpu()
    num_negatives_sampled = int((sampled & (labels == NEGATIVE)).sum())
    title = f"RPN: {int(positives.sum())} positive, {num_negatives_sampled} negative sampled"
    _show(rpn_ax, image, f"{title}, {int(ignored.sum())} ignored")
    rpn_ax.scatter(centres[ignored, 0], centres[ignored, 1], s=2, c="grey", alpha=0.5)
    rpn_ax.scatter(centres[negatives, 0], centres[negatives, 1], s=8, c="red")
    _boxes(rpn_ax, all_anchors[positives.to(device)].cpu(), "yellow")
    _boxes(rpn_ax, gt.boxes[0][gt.valid[0]].cpu(), "lime", width=2.5)

    proposals = rpn.select_proposals(
        logits[None], deltas[None], all_anchors, [len(a) for a in anchors], size[None].to(device)
    )
    with torch.no_grad():
        boxes, roi_labels, _, roi_sampled = model.roi_heads.sample_proposals(proposals, gt)
    boxes, roi_labels, roi_sampled = boxes[0].cpu(), roi_labels[0].cpu(), roi_sampled[0].cpu()
    fg = roi_sampled & (roi_labels > 0)
    bg = (roi_sampled & (roi_labels == 0)).nonzero().squeeze(1)[:num_negatives]
    _show(
        roi_ax,
        image,
        f"ROI heads: {int(fg.sum())} foreground, "
        f"{int((roi_sampled & (roi_labels == 0)).sum())} background sampled",
    )
    _boxes(roi_ax, boxes[bg], "red", alpha=0.5)
    _boxes(roi_ax, boxes[fg], "deepskyblue")
    _boxes(roi_ax, gt.boxes[0][gt.valid[0]].cpu(), "lime", width=2.5)
    return fig


@torch.no_grad()
def detections_figure(model, image, size, target=None, class_names=None, min_score: float = 0.3):
    """Final detections (class colours, scores) against the ground truth (white)."""
    fig, (ax,) = _figure("detections")
    device = next(model.parameters()).device
    detection = model(image[None].to(device), image_sizes=size[None].to(device))[0]
    drawn = draw_detections(image, detection, target, class_names, min_score)
    shown = int((detection["scores"] >= min_score).sum())
    _show(ax, drawn, f"{counted(shown, 'detection')} scoring >= {min_score}")
    return fig


def make_figure(
    what: str, model, image, size=None, target=None, class_names=None, level=0, top_n=50
):
    """Dispatch by name: one of WHAT. `size`: the content's (height, width); None: the whole
    image."""
    if what not in WHAT:
        raise ValueError(f"what={what!r}: choose one of {', '.join(WHAT)}, dataset or labels")
    if what == "assignments" and target is None:
        raise ValueError(
            "what=assignments needs ground truth: use a data set sample, not image=..."
        )
    levels = len(model.anchor_generator.strides)  # (0: P2, as the picture's title says)
    check_number("level", level, 0, levels - 1, integer=True)
    check_number("top_n", top_n, 1, integer=True)
    size = torch.tensor(image.shape[-2:]) if size is None else size.cpu()
    builders = {
        "anchors": lambda: anchors_figure(model, image, size, level),
        "objectness": lambda: objectness_figure(model, image, size),
        "proposals": lambda: proposals_figure(model, image, size, top_n),
        "assignments": lambda: assignments_figure(model, image, size, target),
        "detections": lambda: detections_figure(model, image, size, target, class_names),
    }
    return builders[what]()
