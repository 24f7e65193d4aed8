"""The small structures the stages pass on, the shape legend of the model's docstrings, and
how a label and a count read in what the user is shown.

Shapes:
    B   images in the batch
    S   input side (images are S x S after the letterbox), in pixels
    A   anchors of all FPN levels (N in the RPN: one objectness logit and 4 deltas each)
    P   proposals per image (a fixed count: padded, with a validity mask)
    G   ground-truth boxes per image (padded to the batch's largest count, at least 1)
    R   rows: sampled proposals (training) or all B x P proposals (inference), images together
    C   object classes (labels 1..C; 0 is background)
    K   detections per image (a fixed count: padded, with a validity mask)
    D   detections of one image (the valid ones of its K)
Boxes are xyxy in input pixels unless a docstring says otherwise.
"""

from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence


def class_name(label: int, class_names: list[str] | None) -> str:
    """The name of label 1..C, or the label itself where the data has no names."""
    return class_names[label - 1] if class_names else str(label)


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """`count` `noun`s, singular for one: "1 image", "0 images", "3 images" (`plural` where it
    is not the noun and an s: "boxes")."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


class GroundTruth(NamedTuple):
    """The targets of a batch padded to G boxes per image (G >= 1)."""

    boxes: Tensor  # (B, G, 4) xyxy, input pixels
    labels: Tensor  # (B, G) int64 in 1..num_classes
    valid: Tensor  # (B, G) bool: False on padding and on degenerate boxes


class Proposals(NamedTuple):
    """The RPN's proposals: a fixed count P per image, padded where fewer survive."""

    boxes: Tensor  # (B, P, 4) xyxy, input pixels; padding rows hold a harmless box
    valid: Tensor  # (B, P) bool: True on a prefix of each row (best first)


class Detections(NamedTuple):
    """The final detections of a batch: a fixed count K per image, best first, padded with
    zeros (label 0) where fewer survive. The ONNX export's outputs are these tensors."""

    boxes: Tensor  # (B, K, 4) xyxy, input pixels
    scores: Tensor  # (B, K) in [0, 1]
    labels: Tensor  # (B, K) int64 in 1..C; 0 on padding
    valid: Tensor  # (B, K) bool: True on a prefix of each row

    def per_image(self) -> list[dict[str, Tensor]]:
        """-> B dicts {"boxes" (D, 4), "scores" (D,), "labels" (D,)}: the valid rows only."""
        counts = self.valid.sum(1).tolist()  # the lengths on the host: one read-back per batch
        return [
            {"boxes": boxes[:n], "scores": scores[:n], "labels": labels[:n]}
            for boxes, scores, labels, n in zip(
                self.boxes, self.scores, self.labels, counts, strict=True
            )
        ]


class Targets(list):
    """A batch's per-image target dicts (the batch contract's list) whose tensors are views of
    one padded tensor per key: `padded[key]` (B, max(1, longest), ...), zero beyond each image's
    `lengths[key]`. It is pinned, moved to a device and sent between processes as those few
    tensors. Per image and key, as a plain list has them, they were ~50 pinned copies,
    host-to-device copies and shared-memory files per batch at batch 16, and one DataLoader
    worker delivered a third as many batches (bench/README.md, "Data pipeline throughput").

    A key that some images lack, or a tensor replaced in a dict, travels on its own.
    """

    def __init__(self, targets=()):
        super().__init__(targets)
        keys = set.intersection(*(set(t) for t in self)) if self else set()
        self.lengths = {
            key: [len(t[key]) for t in self] for key in sorted(keys) if self._stackable(key)
        }
        self.padded = {
            key: pad_sequence(
                [t[key] for t in self] + [self[0][key].new_zeros((1, *self[0][key].shape[1:]))],
                batch_first=True,
            )[:-1]
            for key in self.lengths
        }
        self._bind()

    def _stackable(self, key: str) -> bool:
        """Whether every image's `key` is a tensor of the same dtype and trailing shape."""
        values = [t[key] for t in self]
        if not all(isinstance(v, Tensor) and v.dim() > 0 for v in values):
            return False
        first = values[0]
        return all(v.dtype == first.dtype and v.shape[1:] == first.shape[1:] for v in values)

    def _bind(self) -> None:
        """Make each image's packed values views of `padded`."""
        for i, target in enumerate(self):
            self[i] = {**target, **{k: v[i, : self.lengths[k][i]] for k, v in self.padded.items()}}
        self._views = [{k: t[k] for k in self.padded} for t in self]

    @classmethod
    def _from_padded(cls, padded: dict, lengths: dict, rest: list[dict]) -> "Targets":
        targets = cls.__new__(cls)
        list.__init__(targets, rest)
        targets.padded, targets.lengths = padded, lengths
        targets._bind()
        return targets

    def _packed(self) -> "Targets":
        """self, or the same values packed afresh if a packed value was replaced since."""
        intact = len(self) == len(self._views) and all(
            target.get(k) is v
            for target, views in zip(self, self._views, strict=True)
            for k, v in views.items()
        )
        return self if intact else Targets(self)

    def _apply(self, fn) -> "Targets":
        """fn applied to each padded tensor and to every other tensor value."""
        packed = self._packed()
        rest = [
            {k: fn(v) if isinstance(v, Tensor) else v for k, v in t.items()}
            for t in packed.unpacked()
        ]
        return Targets._from_padded(
            {k: fn(v) for k, v in packed.padded.items()}, packed.lengths, rest
        )

    def to(self, device, non_blocking: bool | None = None) -> "Targets":
        """On `device` (Lightning moves a batch's values with their `to`). Copies to an
        accelerator are non-blocking unless told; copies to the host never are unless told (their
        values could be read before they arrive)."""
        if non_blocking is None:
            non_blocking = torch.device(device).type not in ("cpu", "mps")
        return self._apply(lambda v: v.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Targets":
        """In pinned memory (the DataLoader's pin thread calls this)."""
        return self._apply(Tensor.pin_memory)

    def __reduce__(self):
        """Pickled (to leave a DataLoader worker) as the padded tensors and the rest."""
        packed = self._packed()
        return Targets._from_padded, (packed.padded, packed.lengths, packed.unpacked())

    def unpacked(self) -> list[dict]:
        """Each image's values that are not views of `padded`."""
        return [{k: v for k, v in t.items() if k not in self.padded} for t in self]


def pad_targets(targets: list[dict[str, Tensor]], device) -> GroundTruth:
    """List of per-image {"boxes" (K, 4), "labels" (K,)} -> GroundTruth; K may be 0. `Targets`
    from `collate` are padded already: their boxes and labels are taken as they are."""
    padded = targets._packed().padded if isinstance(targets, Targets) else {}
    if not {"boxes", "labels"} <= padded.keys():
        per_image = [
            {
                "boxes": t["boxes"].to(device, torch.float32).reshape(-1, 4),
                "labels": t["labels"].to(device, torch.int64).reshape(-1),
            }
            for t in map(check_target, range(len(targets)), targets)
        ]
        padded = Targets(per_image).padded
    boxes = padded["boxes"].to(device, torch.float32)
    labels = padded["labels"].to(device, torch.int64)
    return GroundTruth(boxes, labels, nondegenerate(boxes) & (labels > 0))


def check_target(i: int, target: dict) -> dict:
    """`target` if it holds "boxes" (K, 4) (or one box (4,)) and "labels" (K,) tensors; by
    their shapes only (values would cost a host wait)."""
    if not isinstance(target, dict) or not {"boxes", "labels"} <= target.keys():
        got = sorted(target) if isinstance(target, dict) else type(target).__name__
        raise ValueError(f'targets[{i}]: a dict with "boxes" and "labels"; got {got}')
    boxes, labels = (torch.as_tensor(target[k]) for k in ("boxes", "labels"))
    boxes_fit = boxes.numel() == 0 or boxes.ndim in (1, 2) and boxes.shape[-1] == 4
    if not boxes_fit or labels.numel() != boxes.numel() // 4:
        raise ValueError(
            f'targets[{i}]: "boxes" (K, 4) xyxy and "labels" (K,); got shapes '
            f"{tuple(boxes.shape)} and {tuple(labels.shape)}"
        )
    return {**target, "boxes": boxes, "labels": labels}


def nondegenerate(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (...) bool: positive width and height."""
    return (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
