"""Post-processing: this project's batched design against per-class loops.

    uv run python bench/postprocess.py [--images 2] [--proposals 1000] [--classes 80] [--reps 5]

The same inputs (class logits, class-specific deltas, proposals) go through three versions of
the last step of the detector, softmax -> decode -> drop low scores and tiny boxes -> NMS per
class -> the best 100 per image:

- batched: `RoIHeads.postprocess`, one pass over the whole batch and one batched NMS;
- per-class loop: the same steps image by image and class by class, torchvision's `nms`;
- Python NMS: the per-class loop with a pure-Python greedy NMS.

The script checks that all three return the same detections, then prints median times and the
ratios to the batched version. Not a test.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torchvision.ops import nms

from frcnn.boxes import clip_boxes, is_large_enough
from frcnn.model.roi_heads import RoIHeads
from frcnn.structures import Proposals


def make_inputs(images: int, proposals: int, classes: int, size: int, seed: int = 0):
    """Proposals clustered on 20 objects per image, with confident logits for their class."""
    g = torch.Generator().manual_seed(seed)
    num = images * proposals
    centres = torch.rand(images, 20, 2, generator=g) * size
    sides = torch.rand(images, 20, 2, generator=g) * size / 4 + 16
    obj = torch.randint(0, 20, (num,), generator=g)
    image_index = torch.arange(images).repeat_interleave(proposals)
    jitter = torch.randn(num, 4, generator=g) * 6
    c, s = centres[image_index, obj], sides[image_index, obj]
    boxes = torch.cat([c - s / 2, c + s / 2], 1) + jitter
    object_class = torch.randint(1, classes + 1, (images, 20), generator=g)[image_index, obj]
    logits = torch.randn(num, classes + 1, generator=g)
    logits[torch.arange(num), object_class] += 6 * torch.rand(num, generator=g)
    deltas = torch.randn(num, classes + 1, 4, generator=g) * 0.1
    return logits, deltas, clip_boxes(boxes, size, size), image_index


def python_greedy_nms(boxes: torch.Tensor, scores: torch.Tensor, thresh: float) -> torch.Tensor:
    """Greedy NMS in plain Python: keep a box unless a kept, higher-scoring one overlaps it."""

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    rows, values = boxes.tolist(), scores.tolist()
    keep = []
    for i in sorted(range(len(rows)), key=lambda i: -values[i]):
        if all(iou(rows[i], rows[j]) <= thresh for j in keep):
            keep.append(i)
    return torch.tensor(keep, dtype=torch.int64)


def per_class_loop(heads, logits, deltas, proposals, image_index, num_images, size, nms_fn):
    """The detector's last step image by image and class by class."""
    results = []
    for i in range(num_images):
        rows = image_index == i
        scores = F.softmax(logits[rows], dim=-1)
        boxes = clip_boxes(heads.box_coder.decode(deltas[rows], proposals[rows, None]), size, size)
        found = []
        for label in range(1, scores.shape[1]):
            s, b = scores[:, label], boxes[:, label]
            candidate = (s > heads.score_thresh) & is_large_enough(b, heads.min_size)
            s, b = s[candidate], b[candidate]
            keep = nms_fn(b, s, heads.nms_thresh)
            found.append((b[keep], s[keep], torch.full((len(keep),), label)))
        b, s, lab = (torch.cat(parts) for parts in zip(*found, strict=True))
        top = s.argsort(descending=True)[: heads.detections_per_img]
        results.append({"boxes": b[top], "scores": s[top], "labels": lab[top]})
    return results


def same_detections(a, b) -> bool:
    return all(
        len(x["scores"]) == len(y["scores"])
        and torch.allclose(x["scores"].sort().values, y["scores"].sort().values)
        and torch.equal(x["labels"].sort().values, y["labels"].sort().values)
        for x, y in zip(a, b, strict=True)
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--proposals", type=int, default=1000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    heads = RoIHeads(args.classes)
    logits, deltas, proposals, image_index = make_inputs(
        args.images, args.proposals, args.classes, args.size
    )
    inputs = (logits, deltas, proposals, image_index, args.images)
    padded_proposals = Proposals(
        proposals.view(args.images, args.proposals, 4),
        torch.ones(args.images, args.proposals, dtype=torch.bool),
    )
    versions = {
        "batched (this project)": lambda: heads.postprocess(
            logits, deltas, padded_proposals, torch.full((args.images, 2), args.size)
        ).per_image(),
        "per-class loop, torchvision nms": lambda: per_class_loop(heads, *inputs, args.size, nms),
        "per-class loop, Python NMS": lambda: per_class_loop(
            heads, *inputs, args.size, python_greedy_nms
        ),
    }
    reference = versions["batched (this project)"]()
    candidates = (F.softmax(logits, -1)[:, 1:] > heads.score_thresh).sum().item()
    print(
        f"torch {torch.__version__}, {args.images} images x {args.proposals} proposals, "
        f"{args.classes} classes, {candidates} candidate boxes, threads {torch.get_num_threads()}"
    )
    print("| version | same detections | median (ms) | x batched |")
    print("| --- | --- | --- | --- |")
    medians = {}
    for name, fn in versions.items():
        times = []
        for _ in range(args.reps + 1):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
        medians[name] = statistics.median(times[1:])
        ratio = medians[name] / medians["batched (this project)"]
        same = "yes" if same_detections(out, reference) else "NO"
        print(f"| {name} | {same} | {1000 * medians[name]:.1f} | {ratio:.1f} |")


if __name__ == "__main__":
    main()
