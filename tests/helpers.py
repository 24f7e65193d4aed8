"""What tests of several folders share: the learning recipe's small detector (`overfit`), its
mAP, work run by two processes in a process group, and what a terminal shows (`screen`)."""

import multiprocessing
import re
import tempfile
from pathlib import Path

import lightning as L
import torch
from omegaconf import open_dict

from frcnn.app.build import build
from frcnn.data import collate

OVERFIT_SIZE = 128

OVERFIT_STEPS = 120
# train.py's own recipe (conf/module/default.yaml, train.yaml) at a test's size: its SGD with
# the weight-decay split, warm-up and multistep decay, its LR scaled to the batch, gradient
# clipping; 8 images of 3 classes at 128 px, a small model, no validation or outputs
OVERFIT_RUN = [
    "data.image_size=128",
    "data.batch_size=4",
    "data.num_workers=0",
    "data.num_classes=3",
    "data.flip_prob=0.0",  # the test scores the training images as they are
    "data.train.num_images=8",
    "++data.train.max_objects=4",
    "data.val.num_images=8",
    "model.fpn_channels=64",
    "model.rpn.pre_nms_top_n_train=500",
    "model.rpn.post_nms_top_n_train=200",
    "model.rpn.pre_nms_top_n_test=300",
    "model.rpn.post_nms_top_n_test=100",
    "model.roi_heads.batch_size_per_image=256",  # background rows enough to learn (below)
    "model.roi_heads.representation_size=256",
    "module.optimizer.lr=0.08",  # 0.02 at this batch of 4 (lr_base_batch=16)
    "module.scheduler.warmup_steps=20",
    "module.scheduler.milestones=[0.89]",
    f"trainer.max_steps={OVERFIT_STEPS}",
    "trainer.max_epochs=-1",
    "trainer.limit_val_batches=0",
    "trainer.enable_progress_bar=false",
    "callbacks=none",
    "~logger",
    "device=cpu",
]


class LossHistory(L.Callback):
    """The total training loss of every step (a host read per step: a test's, not train.py's)."""

    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def overfit(seed: int = 0):
    """A small detector trained for 120 steps on 8 synthetic images as train.py trains it
    (`app.build`: the config's module, its `configure_optimizers` and `warmup_decay`, the LR
    scaled to the batch, the Trainer's gradient clipping), 35-60 s on a 2-core CPU.

    The recipe has margin, not luck: LR 0.02 at this batch of 4 (momentum 0.9) reached after a
    20-step linear warm-up and divided by 10 for the last 11% of the steps, gradients clipped
    to norm 10 (without warm-up and clipping, trainable BatchNorm made the loss climb from 11
    to 46 on AVX-512 kernels), 256 sampled RoIs per image. Checked on the grid
    ATEN_CPU_CAPABILITY = default, avx2, avx512 x seeds 0..4 x one and two threads (the suite's
    two processes on 2 cores take one each, `pytest -n 0` two): 30 runs, each `overfit(seed)`
    then `mean_ap` on its 8 images, on a 2-core AMD EPYC with AVX-512, 2026-12-07: mean loss of
    the last 10 steps 0.10-0.14x that of the first 10 (the test needs < 0.8x), mAP@0.5 0.94-1.0
    (needs 0.8). The recipe before, 90 steps and 64 RoIs per image (its grid of 2026-12-03 had
    one thread count), gave 0.77 with avx512 kernels on two threads for seed 0 (`uv run pytest
    -n 0 tests/test_learning.py` failed there): class-2 detections scored 0.8-0.9 on the
    background, and BatchNorm's running statistics lagged the last steps' weights (recomputed,
    they raised a 0.73 to 0.89); 256 RoIs alone still gave 0.73 once (avx2, one thread), 120
    steps alone 0.84. With the config's own milestones (0.67, 0.89) the LR fell too early:
    mAP@0.5 down to 0.84.

    Returns (model, data, history, untrained): the model in eval mode, the SyntheticShapes
    source it learned (data seed 0), the total loss of every step and the mAP@0.5 before.
    """
    from tests.app.helpers import composed

    with tempfile.TemporaryDirectory() as folder:
        cfg = composed(Path(folder), *OVERFIT_RUN, f"seed={seed}")
        with open_dict(cfg):
            del cfg["hydra"]  # as a task function gets it (HydraConfig holds it)
        datamodule, module, trainer = build(cfg)
        data = datamodule.train_set
        batch = collate([data[i] for i in range(len(data))])
        untrained = mean_ap(module.model, batch["images"], batch["targets"])
        history = LossHistory()
        trainer.callbacks.append(history)
        trainer.fit(module, datamodule=datamodule)
    return module.model.eval(), data, history.losses, untrained


def mean_ap(model, images, targets) -> float:
    """COCO mAP@0.5 of `model` on a batch (the model is left in the mode it had)."""
    from torchmetrics.detection import MeanAveragePrecision

    was_training = model.training
    metric = MeanAveragePrecision(iou_thresholds=[0.5], backend="faster_coco_eval")
    with torch.no_grad():
        metric.update(model.eval()(images), targets)
    model.train(was_training)
    return float(metric.compute()["map_50"])


def in_two_processes(work, tmp_path) -> list:
    """`work(rank)` run by two real processes joined in a gloo process group (forked: nothing
    is imported again); their results, by rank."""
    import torch.distributed as dist

    context = multiprocessing.get_context("fork")
    queue = context.Queue()

    def main(rank: int) -> None:
        store = f"file://{tmp_path / 'process_group'}"
        dist.init_process_group("gloo", init_method=store, rank=rank, world_size=2)
        try:
            queue.put((rank, work(rank)))
        finally:
            dist.destroy_process_group()

    processes = [context.Process(target=main, args=(rank,)) for rank in range(2)]
    for process in processes:
        process.start()
    results = dict(queue.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return [results[0], results[1]]


def screen(printed: str) -> list[str]:
    """The lines a terminal shows of `printed`, tqdm's bars written over one another with
    carriage returns and cursor-up codes, a line cleared from the cursor on (`ESC[K`)."""
    lines, row, column = [""], 0, 0
    for part in re.split(r"(\n|\r|\x1b\[A|\x1b\[K)", printed):
        if part == "\n":
            row, column = row + 1, 0
            lines += [""] * (row + 1 - len(lines))
        elif part == "\r":
            column = 0
        elif part == "\x1b[A":
            row = max(row - 1, 0)
        elif part == "\x1b[K":
            lines[row] = lines[row][:column]
        else:
            lines[row] = lines[row][:column].ljust(column) + part + lines[row][column + len(part) :]
            column += len(part)
    return [line.rstrip() for line in lines]
