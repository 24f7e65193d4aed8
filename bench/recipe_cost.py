"""What the training recipe's choices cost, alone: one weight-EMA update (`ema=on`) on the
demo's and coco400's detectors, and flip TTA (`model.tta=flip`) against none per image.

    uv run python bench/recipe_cost.py --ckpt logs/train/runs/<demo run>/checkpoints/<best>.ckpt

EMA: the median of 20 calls of `frcnn.training.callbacks.ema_update` over the model's weights and
floating-point buffers (what `WeightEMA` averages). TTA: the checkpoint's detector on 8
synthetic images (one batch), median of 5 after a warm-up, per image. Not a test; the figures
are in bench/README.md ("Training recipe").
"""

import argparse
import functools
import statistics
import time

import torch

from frcnn.data.synthetic import draw_sample
from frcnn.inference.predictor import Predictor
from frcnn.model import FasterRCNN
from frcnn.training.callbacks import ema_update

DETECTORS = {
    "demo ResNet-18": dict(num_classes=6, backbone=dict(depth=18, norm="bn"), fpn_channels=128),
    "coco400 ResNet-50": dict(num_classes=80, backbone=dict(depth=50, frozen="layer3")),
}


def median_s(fn, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def ema_cost() -> None:
    for name, settings in DETECTORS.items():
        model = FasterRCNN(**settings)
        current = [p.detach() for p in model.parameters()]
        current += [b for b in model.buffers() if b.is_floating_point()]
        averaged = [t.clone() for t in current]
        updates = torch.tensor(10)
        update = functools.partial(ema_update, averaged, current, updates, 0.9998, 2000)
        seconds = median_s(update, 20, 3)
        values = sum(t.numel() for t in current) / 1e6
        print(f"| ema=on, {name} | {values:.1f} M values | {seconds * 1e3:.1f} ms per update |")


@torch.no_grad()
def tta_cost(checkpoint: str, count: int = 8) -> None:
    images = [draw_sample(5, i, 6).image for i in range(count)]
    for tta in ("none", "flip"):
        predictor = Predictor.from_checkpoint(checkpoint, "cpu", tta=tta)
        batch, sizes, _ = predictor.batch(images)
        seconds = median_s(functools.partial(predictor.model, batch, image_sizes=sizes), 5)
        print(f"| model.tta={tta} | batch of {count} | {seconds / count * 1e3:.0f} ms per image |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", help="a demo checkpoint, for the TTA rows")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| choice | size | cost |\n| --- | --- | --- |")
    ema_cost()
    if args.ckpt:
        tta_cost(args.ckpt)


if __name__ == "__main__":
    main()
