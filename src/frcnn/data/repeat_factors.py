"""Repeat-factor sampling (LVIS, Gupta et al. 2019; Detectron2's RepeatFactorTrainingSampler):
images of rare classes are seen more often in each training epoch."""

import math

import numpy as np
import torch
from torch.utils.data import DistributedSampler


def image_classes(labels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each (class, image) pair once where the image has a box of the class: classes (K,) and
    images (K,), indices into `labels` (each image's labels). One sort of all the boxes'
    labels, not a pass per image or per class (LVIS: 100,000 images of 1203 classes)."""
    if not labels:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    classes = np.concatenate(labels).astype(np.int64)
    images = np.repeat(np.arange(len(labels)), [len(ls) for ls in labels])
    span = int(classes.max(initial=0)) + 1
    pairs = np.unique(images * span + classes)
    return pairs % span, pairs // span


def repeat_factors(labels: list[np.ndarray], num_classes: int, threshold: float) -> np.ndarray:
    """Each image's repeat factor (N,): r(c) = max(1, sqrt(threshold / f(c))) for a class c
    whose images are the share f(c) of all; an image's is the largest r(c) of its classes
    (1 without objects). `labels`: each image's labels in 1..num_classes."""
    classes, images = image_classes(labels)
    share = np.bincount(classes, minlength=num_classes + 1) / max(len(labels), 1)
    with np.errstate(divide="ignore"):
        per_class = np.maximum(1.0, np.sqrt(threshold / share))
    factors = np.ones(len(labels))
    np.maximum.at(factors, images, per_class[classes])
    return factors


def class_table(labels: list[np.ndarray], factors: np.ndarray, class_names: list[str]) -> list:
    """Per class: (name, images with it, their share of an epoch's images before, and after
    the repeat factors (expected))."""
    classes, images = image_classes(labels)
    images_of = np.bincount(classes, minlength=len(class_names) + 1)
    repeated = np.bincount(classes, weights=factors[images], minlength=len(class_names) + 1)
    before, after = len(labels), factors.sum()
    return [
        (name, int(images_of[label]), images_of[label] / before, repeated[label] / after)
        for label, name in enumerate(class_names, 1)
    ]


class RepeatFactorSampler(DistributedSampler):
    """Each epoch, image i appears floor(r_i) times and once more with probability
    frac(r_i), in a random order: the same on every process for one seed and epoch
    (`set_epoch`, which Lightning calls), so process k of N takes positions k, k + N, ... of
    it: disjoint parts, together the whole epoch. An epoch has `round(sum(r))` positions
    (rounded down to a multiple of N, every process as many; the random rounding's few extra
    or missing ones are dropped or repeated from the start): its length, and with it the LR
    schedule's, is fixed."""

    def __init__(self, dataset, factors: np.ndarray, seed: int, num_replicas=1, rank=0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.factors = torch.as_tensor(factors, dtype=torch.float64)
        self.total = int(round(float(self.factors.sum()))) // num_replicas * num_replicas
        self.num_samples = self.total // num_replicas

    def epoch_indices(self) -> torch.Tensor:
        """The epoch's image indices (`total`), every process's together."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        whole = self.factors.floor()
        draw = torch.rand(len(whole), generator=generator, dtype=torch.float64)
        counts = whole + (draw < self.factors - whole)  # every count at least 1
        indices = torch.repeat_interleave(torch.arange(len(counts)), counts.long())
        indices = indices[torch.randperm(len(indices), generator=generator)]
        repeats = math.ceil(self.total / len(indices))
        return indices.repeat(repeats)[: self.total]

    def __iter__(self):
        return iter(self.epoch_indices()[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples
