"""Pictures of what each stage of the detector does, as PNG files.

uv run visualize.py what=anchors|objectness|proposals|assignments|detections
uv run visualize.py what=detections ckpt_path=.../last.ckpt image=photo.jpg
"""

import hydra
from omegaconf import DictConfig

from frcnn.app import command, visualize


@hydra.main(config_path="conf", config_name="visualize", version_base="1.3")
@command(checkpoint_data=True)
def main(cfg: DictConfig) -> None:
    visualize(cfg)


if __name__ == "__main__":
    main()
