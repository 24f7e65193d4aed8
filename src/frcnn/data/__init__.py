"""Data: sources (synthetic, COCO, YOLO, VOC folders; the hub; torch Datasets) -> transforms ->
DataModule."""

from frcnn.data.coco_folder import COCOFolder
from frcnn.data.coco_hub import HubCOCO, HubDetection
from frcnn.data.datamodule import DetectionDataModule, no_validation_source
from frcnn.data.synthetic import SyntheticShapes
from frcnn.data.torch_dataset import DatasetSource
from frcnn.data.transforms import Record, Transform, collate
from frcnn.data.voc_folder import VOCFolder
from frcnn.data.yolo_folder import YOLOFolder

# the sources a data config names (`data.train._target_`, `data.val._target_`; base.yaml's
# data.val: `no_validation_source`)
SOURCES = (
    COCOFolder, HubCOCO, HubDetection, SyntheticShapes, YOLOFolder, VOCFolder, DatasetSource,
    no_validation_source,
)  # fmt: skip

__all__ = [
    "COCOFolder",
    "DatasetSource",
    "DetectionDataModule",
    "HubCOCO",
    "HubDetection",
    "Record",
    "SOURCES",
    "SyntheticShapes",
    "Transform",
    "VOCFolder",
    "YOLOFolder",
    "collate",
]
