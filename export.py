"""Export a checkpoint's detector to ONNX, then check it with onnxruntime.

uv run export.py ckpt_path=logs/train/runs/.../checkpoints/last.ckpt output=model.onnx
uv run export.py ckpt_path=... output=model.onnx check_images=photos/ opset=17
"""

import hydra
from omegaconf import DictConfig

from frcnn.app import command, export


@hydra.main(config_path="conf", config_name="export", version_base="1.3")
@command
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
