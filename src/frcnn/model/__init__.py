"""The detector as plain torch.nn modules."""

from frcnn.model.convert import from_torchvision, load_weights
from frcnn.model.faster_rcnn import FasterRCNN

__all__ = ["FasterRCNN", "from_torchvision", "load_weights"]
