"""Run a checkpoint on images: annotated copies and one COCO-format JSON of all detections.

uv run predict.py ckpt_path=logs/train/runs/.../checkpoints/last.ckpt input=photos/ output=out
uv run predict.py ckpt_path=... input='data/**/*.jpg' score_thresh=0.5 device=cpu
"""

import hydra
from omegaconf import DictConfig

from frcnn.app import command, predict_files


@hydra.main(config_path="conf", config_name="predict", version_base="1.3")
@command
def main(cfg: DictConfig) -> None:
    predict_files(cfg)


if __name__ == "__main__":
    main()
