"""What every source shares: decode + transform with bad samples skipped, counted, logged."""

import numpy as np
import torch
from torch.utils.data import Dataset

from frcnn.data.transforms import Record, SkipLog, Transform, clean_annotations

# Consecutive unreadable samples after which a map-style source gives up: the data is broken
MAX_CONSECUTIVE_SKIPS = 50


def transform_record(record: Record, transform: Transform, num_classes: int, skips: SkipLog, rng):
    """Record -> (image, target), or None if the image cannot be decoded (logged)."""
    record = clean_annotations(record, num_classes, skips)
    try:
        return transform(record, rng, skips)
    except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for corrupt images
        skips("unreadable image skipped", record.image_id, f"{type(err).__name__}: {err}")
        return None


class MapSource(Dataset):
    """A map-style source: subclasses give `__len__` and `record(index)`.

    A sample whose image cannot be read is replaced by the next readable one, so batches keep
    their size; the skip is counted and logged.
    """

    def __init__(self, transform: Transform, num_classes: int, name: str):
        self.transform = transform
        self.num_classes = num_classes
        self.skips = SkipLog(name)
        self._rng = None

    def record(self, index: int) -> Record:
        raise NotImplementedError

    def __getitem__(self, index: int):
        if self._rng is None:  # one generator per process, for flips: seeded by the run's seed
            # (torch's seed in the main process, the worker's own seed, derived from it, in a
            # DataLoader worker)
            self._rng = np.random.default_rng(torch.initial_seed())
        for attempt in range(MAX_CONSECUTIVE_SKIPS):
            i = (index + attempt) % len(self)
            try:
                record = self.record(i)
            except (OSError, ValueError, KeyError) as err:
                self.skips("unreadable record skipped", i, f"{type(err).__name__}: {err}")
                continue
            sample = transform_record(
                record, self.transform, self.num_classes, self.skips, self._rng
            )
            if sample is not None:
                return sample
        raise RuntimeError(
            f"{self.skips.source}: {MAX_CONSECUTIVE_SKIPS} consecutive samples from index "
            f"{index} could not be read; is the data set intact?"
        )
