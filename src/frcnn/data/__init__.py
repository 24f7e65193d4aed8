"""Data: sources (synthetic, COCO folder, hub COCO) -> transforms -> LightningDataModule."""

from frcnn.data.coco_folder import COCOFolder
from frcnn.data.coco_hub import HubCOCO
from frcnn.data.datamodule import DetectionDataModule
from frcnn.data.synthetic import SyntheticShapes
from frcnn.data.transforms import Record, Transform, collate

__all__ = [
    "COCOFolder",
    "DetectionDataModule",
    "HubCOCO",
    "Record",
    "SyntheticShapes",
    "Transform",
    "collate",
]
