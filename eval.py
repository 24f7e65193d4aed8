"""Evaluate a checkpoint (COCO mAP on the validation set), e.g. under other NMS settings.

uv run eval.py ckpt_path=logs/train/runs/.../checkpoints/last.ckpt
uv run eval.py -m ckpt_path=... model.roi_heads.nms_thresh=0.3,0.5,0.7
"""

import hydra
from omegaconf import DictConfig

from frcnn.app import command, evaluate


@hydra.main(config_path="conf", config_name="eval", version_base="1.3")
@command(checkpoint_data=True)
def main(cfg: DictConfig) -> float | None:
    return evaluate(cfg)


if __name__ == "__main__":
    main()
