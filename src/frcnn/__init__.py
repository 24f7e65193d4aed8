"""frcnn: a readable Faster R-CNN."""
