"""What every source shares: decode + transform with bad samples skipped, counted, logged."""

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from frcnn.data.transforms import Record, SkipLog, Transform, clean_annotations

# PIL's errors for corrupt images, and for images too large to decode safely (a 225-megapixel
# "decompression bomb"; PIL.Image.MAX_IMAGE_PIXELS sets the limit)
UNREADABLE_IMAGE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

# Consecutive unreadable samples after which a map-style source gives up: the data is broken
MAX_CONSECUTIVE_SKIPS = 50


def transform_record(record: Record, transform: Transform, num_classes: int, skips: SkipLog, rng):
    """Record -> (image, target), or None if the image cannot be decoded (logged)."""
    record = clean_annotations(record, num_classes, skips)
    try:
        return transform(record, rng, skips)
    except UNREADABLE_IMAGE as err:
        skips("unreadable image skipped", record.image_id, f"{type(err).__name__}: {err}")
        return None


class MapSource(Dataset):
    """A map-style source: subclasses give `__len__`, `record(index)` and `describe(index)`.

    A sample whose image cannot be read is counted and logged, then, in training
    (`substitute=True`), replaced by the next readable one so that batches keep their size; in
    validation (`substitute=False`) it is None, which `collate` leaves out: no image is ever
    counted twice.
    """

    def __init__(self, transform: Transform, num_classes: int, name: str):
        self.transform = transform
        self.num_classes = num_classes
        self.skips = SkipLog(name)
        self.substitute = True
        self._rng = None

    def record(self, index: int) -> Record:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """How a log names sample `index` (its image id, its file)."""
        return str(index)

    def __getitem__(self, index: int):
        if self._rng is None:  # one generator per process, for flips: seeded by the run's seed
            # (torch's seed in the main process, the worker's own seed, derived from it, in a
            # DataLoader worker)
            self._rng = np.random.default_rng(torch.initial_seed())
        for attempt in range(MAX_CONSECUTIVE_SKIPS if self.substitute else 1):
            i = (index + attempt) % len(self)
            try:
                record = self.record(i)
            except (OSError, ValueError, KeyError) as err:
                self.skips(
                    "unreadable record skipped", self.describe(i), f"{type(err).__name__}: {err}"
                )
                continue
            sample = transform_record(
                record, self.transform, self.num_classes, self.skips, self._rng
            )
            if sample is not None or not self.substitute:
                return sample
        if not self.substitute:
            return None
        raise RuntimeError(
            f"{self.skips.source}: {MAX_CONSECUTIVE_SKIPS} consecutive samples from index "
            f"{index} could not be read; is the data set intact?"
        )
