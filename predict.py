"""Run a checkpoint on images: annotated copies and one COCO-format JSON of all detections; on a
video: an annotated video and a JSON line per frame.

uv run predict.py ckpt_path=logs/train/runs/.../checkpoints/last.ckpt input=photos/ output=out
uv run predict.py ckpt_path=... input='data/**/*.jpg' score_thresh=0.5 device=cpu
uv run predict.py ckpt_path=... input=clip.mp4 stride=2
"""

import hydra
from omegaconf import DictConfig

from frcnn.app import command, predict_files, predict_video
from frcnn.inference.video import is_video


@hydra.main(config_path="conf", config_name="predict", version_base="1.3")
@command
def main(cfg: DictConfig) -> None:
    if is_video(cfg.input):
        predict_video(cfg)
    else:
        predict_files(cfg)


if __name__ == "__main__":
    main()
