"""Train a Faster R-CNN.

uv run train.py                         # the synthetic demo
uv run train.py experiment=coco400      # COCO from the hub, 400 px, one GPU
uv run train.py -m model.rpn.nms_thresh=0.6,0.7 model.roi_heads.fg_iou_thresh=0.5,0.6
"""

import hydra
from omegaconf import DictConfig

from frcnn.app import command, train


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
@command
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
