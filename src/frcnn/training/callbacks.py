"""Lightning callbacks of training: SIGTERM and SLURM's requeue signal taken by every process
at the same step; a stop when the loss explodes, or (Lightning's, its settings checked) when
the metric stalls; last.ckpt at every validation, every N steps and on SIGTERM; the weights'
moving average; the model summary by stage; the progress bar.
(The TensorBoard pictures are `frcnn.visualization.tensorboard`'s.)"""

import contextlib
import functools
import logging
import signal
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.callbacks import (
    ModelCheckpoint,
    ModelSummary,
    TQDMProgressBar,
    WeightAveraging,
)
from lightning.pytorch.callbacks.progress.tqdm_progress import convert_inf
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from torch import Tensor

from frcnn.checks import check_flag, check_number
from frcnn.distributed import distributed
from frcnn.training.checkpoint import AtomicCheckpointIO

log = logging.getLogger(__name__)


class Preemption(L.Callback):
    """SIGTERM (what SLURM, Kubernetes and torchrun send before they stop a job) and SIGINT
    (Ctrl-C) stop training after the current step, on every process at the same step, by
    raising Lightning's `SIGTERMException` there (then `LastCheckpoint` saves that step;
    `stopped_by` says which signal). A second Ctrl-C interrupts at once, without a checkpoint
    (Lightning's own Ctrl-C handling exits with none at all). SLURM's requeue signal
    (SIGUSR1 with `#SBATCH --signal=SIGUSR1@90`) makes Lightning's SLURM support save
    `hpc_ckpt_<n>.ckpt` and requeue the job, also after the step on every process.

    Once training starts, these replace Lightning's own handlers, which do that work inside the
    signal handler: under DDP they run collectives there (and signal the other processes), which
    then meet the wrong collective (a checkpoint's barrier, a validation gather) and hang; in
    one process they close the TensorBoard writer in the middle of a write. Here a handler only
    takes note; after each step the processes agree (MAX all-reduce over a CPU gloo group, no
    GPU wait) whether any of them got a signal."""

    def __init__(self):
        self.received: dict[int, bool] = {}
        self.group = None
        self.stopped_by: signal.Signals | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        signals = [signal.SIGTERM, signal.SIGINT]
        environment = trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            signals.append(environment.requeue_signal)
        self.received = dict.fromkeys(signals, False)
        if distributed() and self.group is None:
            self.group = dist.new_group(backend="gloo")  # every process builds it: a collective
        for signum in signals:
            signal.signal(signum, self._note)  # Lightning restores the original ones at teardown

    def _note(self, signum, frame) -> None:
        self.received[signum] = True
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second one: at once
            log.warning(
                "SIGINT (Ctrl-C): training stops after the current step, with a checkpoint "
                "(Ctrl-C again stops at once, without one)"
            )
        else:
            log.warning("%s: taken after this step", signal.Signals(signum).name)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # only the flags read as set are cleared: a signal may come at any bytecode, and the
        # all-reduce waits for the other processes (a flag cleared after it would drop a
        # signal that came during it: the process trains on, and its launcher kills it)
        taken = [signum for signum, got in self.received.items() if got]
        for signum in taken:
            self.received[signum] = False
        received = torch.tensor([signum in taken for signum in self.received], dtype=torch.int32)
        if self.group is not None:
            dist.all_reduce(received, op=dist.ReduceOp.MAX, group=self.group)
        for signum, got in zip(list(self.received), received.tolist(), strict=True):
            if got and signum in (signal.SIGTERM, signal.SIGINT):
                self.stopped_by = signal.Signals(signum)
                raise SIGTERMException
            if got:  # the requeue signal: Lightning's handler, now on every process together
                trainer._signal_connector._slurm_sigusr_handler_fn(signum, None)


class StopOnDivergence(L.Callback):
    """Stops a run whose loss explodes but stays finite (a learning rate far too high, held
    finite by gradient clipping: losses of 1e20 and mAP 0 otherwise), which the non-finite
    check of the module cannot see.

    Rule: the training loss averaged over each `window` steps (over all processes) must stay
    within `factor` times the lowest such average of the run, or of the first step's loss (so
    that a run shorter than a window is covered too: the steps since the last full window are
    checked before every validation); a loss above it stops training with an error (a sweep's
    trial then counts as failed). The loss is summed on the device and read once a window, at
    the first step and before a validation (no host wait per step). Off:
    `~callbacks.divergence`."""

    def __init__(self, factor: float = 10.0, window: int = 20):
        check_number("callbacks.divergence.factor", factor, 1.0, open_low=True)
        check_number("callbacks.divergence.window", window, 1, integer=True)
        self.factor, self.window = factor, window
        self.lowest = (float("inf"), "")  # (mean loss, the steps it was averaged over)
        self._sum, self._steps = None, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"].detach()
        if not self.lowest[1]:  # the first step: the reference of a run shorter than a window
            first = float(trainer.strategy.reduce(loss, reduce_op="mean"))
            self.lowest = (first, f"step {trainer.global_step - 1}")
        self._sum = loss if self._sum is None else self._sum + loss
        self._steps += 1
        if self._steps == self.window:
            self.check(trainer, reset=True)

    def on_validation_start(self, trainer, pl_module) -> None:
        if self._steps and not trainer.sanity_checking:  # the steps since the last window
            self.check(trainer, reset=False)

    def check(self, trainer, reset: bool) -> None:
        """The mean loss of the steps summed so far: raises if it exploded."""
        mean = float(trainer.strategy.reduce(self._sum / self._steps, reduce_op="mean"))
        last = trainer.global_step - 1
        steps = f"steps {last - self._steps + 1}-{last}"
        if reset:
            self._sum, self._steps = None, 0
        self.update(mean, steps)

    def update(self, mean: float, steps: str) -> None:
        """One mean loss (over `steps`): raises if it exploded."""
        lowest, at = self.lowest
        if mean > self.factor * lowest:
            raise FloatingPointError(
                f"The training loss exploded: {mean:.3g} on average over {steps}, more than "
                f"{self.factor:g} times its lowest ({lowest:.3g}, {at}). Training stopped; "
                "the last good checkpoint is kept. Try a lower learning rate "
                "(module.optimizer.lr) or more warm-up; ~callbacks.divergence turns this off."
            )
        if mean < lowest:
            self.lowest = (mean, steps)


class EarlyStopping(LightningEarlyStopping):
    """Lightning's early stopping (`callbacks=early_stopping`), its counts checked at start-up:
    a negative `min_delta` counted a fall of the metric as a rise (the run never stopped), a
    negative `patience` stopped at the first validation that did not improve."""

    def __init__(self, monitor: str, min_delta: float = 0.0, patience: int = 3, **kwargs):
        check_number("callbacks.early_stopping.min_delta", min_delta, 0)
        check_number("callbacks.early_stopping.patience", patience, 0, integer=True)
        super().__init__(monitor, min_delta, patience, **kwargs)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, for a run folder that may have been moved or copied since
    its checkpoint was written: resumed from `<run>/checkpoints/<name>.ckpt` (which resumes in
    `<run>`), the checkpoints it remembers are taken from `dirpath` where they are now, not
    from the paths they had (Lightning would keep the old paths: a `last-v1.ckpt` beside the
    stale `last.ckpt`, and the best checkpoint looked for where it no longer is)."""

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("dirpath")
        paths = [state_dict.get(k) for k in ("best_model_path", "kth_best_model_path")]
        paths += [state_dict.get("last_model_path"), *state_dict.get("best_k_models", {})]
        named = [Path(p).name for p in paths if p]
        here = Path(self.dirpath) if self.dirpath else None
        if saved and here and saved != str(here) and all((here / n).is_file() for n in named):
            state_dict = {**state_dict, "dirpath": str(here)}  # the same run, moved
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if state_dict.get(key):
                    state_dict[key] = str(here / Path(state_dict[key]).name)
            state_dict["best_k_models"] = {
                str(here / Path(p).name): v for p, v in state_dict.get("best_k_models", {}).items()
            }
        super().load_state_dict(state_dict)

    # (global step, hook, file) of the checkpoint written in this callback's latest call of a
    # hook that saves: a LastCheckpoint called after it in the same call of the same hook (the
    # same state) links to it; the hook tells that call from an earlier hook's at the same step
    written: tuple[int, str, str] | None = None
    _hook = ""

    def on_train_batch_end(self, trainer, *args) -> None:
        self._hook, self.written = "on_train_batch_end", None
        super().on_train_batch_end(trainer, *args)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._hook, self.written = "on_train_epoch_end", None
        super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._hook, self.written = "on_validation_end", None
        super().on_validation_end(trainer, pl_module)

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self.written = (trainer.global_step, self._hook, filepath)


class LastCheckpoint(RunCheckpoint):
    """`<dirpath>/last.ckpt`, written over at the end of every validation (improved or not) and,
    with `every_n_train_steps`, every N training steps as well: a run can be resumed from its
    latest validation whatever N is. (Lightning's ModelCheckpoint saves on one trigger only: with
    a step trigger it skips validations that fall between multiples of N.) Where the best
    checkpoint was written just before it, of the same state, last.ckpt is that file under a
    second name (`linking`): one write, one copy on the disk."""

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None):
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            every_n_train_steps=every_n_train_steps,
            # a resume that changes N restores none of this callback's state (Lightning keys
            # it by N): without the counter it still writes over last.ckpt, not last-v1.ckpt
            enable_version_counter=False,
        )

    def on_train_batch_end(self, trainer, *args) -> None:
        with self.linking(trainer, "on_train_batch_end"):
            super().on_train_batch_end(trainer, *args)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        with self.linking(trainer, "on_train_epoch_end"):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        with self.linking(trainer, "on_validation_end"):
            if self._every_n_train_steps < 1:  # saved at every validation by Lightning already
                return super().on_validation_end(trainer, pl_module)
            if (
                trainer.fast_dev_run
                or trainer.sanity_checking
                or trainer.state.fn != TrainerFn.FITTING
            ):
                return
            # also after a step-triggered save of this step: the callbacks' states (best score)
            # have changed since
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    @contextlib.contextmanager
    def linking(self, trainer, hook: str):
        """In a call of the `hook` that saves: last.ckpt, written at the step of a checkpoint
        that another checkpoint callback wrote in this call (before this one: the same state,
        the best one where it improved), is a second name of that file
        (`AtomicCheckpointIO.same_as`), not a second copy. Not one written in an earlier hook
        of the step (a step-triggered save before its validation: an earlier state), whatever
        the callbacks' order; not on SIGTERM (`on_exception` saves a later state of that step)."""
        writer = trainer.strategy.checkpoint_io
        if not isinstance(writer, AtomicCheckpointIO):
            yield
            return
        writer.same_as = next(
            (
                Path(other.written[2])
                for other in trainer.checkpoint_callbacks
                if other is not self and getattr(other, "written", None)
                and other.written[:2] == (trainer.global_step, hook)
            ),
            None,
        )  # fmt: skip
        try:
            yield
        finally:
            writer.same_as = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """SIGTERM (`Preemption`): last.ckpt is written at the step every process stopped
        at. (Not on other errors: a diverged model must not replace the last good checkpoint.)"""
        stopping = isinstance(exception, SIGTERMException)
        if stopping and not trainer.fast_dev_run and trainer.state.fn == TrainerFn.FITTING:
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar with the figures that fit beside it on a terminal's line: the
    step's loss and speed and the last validation's mAP@0.5 (`loss=0.512, images_per_s=11.8,
    val/map_50=0.412`). Lightning shows a figure logged per step and per epoch twice
    (`train/loss_step`, `train/loss_epoch`): the five took 130 columns, and a terminal of 150
    was left a bar of one character. The epoch means are in TensorBoard. With `leave`, each
    epoch's bar stays: a line per epoch."""

    def __init__(self, refresh_rate: int = 1, process_position: int = 0, leave: bool = False):
        # a negative rate hid the bar as 0 does, unasked; `leave=no` (a string) meant true
        check_number("callbacks.progress_bar.refresh_rate", refresh_rate, 0, integer=True)
        check_flag("callbacks.progress_bar.leave", leave)
        super().__init__(refresh_rate, process_position, leave)

    def on_train_start(self, trainer: L.Trainer, *args) -> None:
        super().on_train_start(trainer, *args)
        # a run resumed mid-epoch starts no epoch: this bar goes on with the epoch it is in
        self.train_progress_bar.total = convert_inf(self.total_train_batches)
        self.train_progress_bar.set_description(f"Epoch {trainer.current_epoch}")

    def on_train_epoch_start(self, *args) -> None:
        if self._leave:  # each epoch makes its own bar (a resumed epoch's closed already)
            self.close_train_bar()
        super().on_train_epoch_start(*args)

    def on_train_end(self, *args) -> None:
        self.close_train_bar()
        super().on_train_end(*args)

    def close_train_bar(self) -> None:
        """Closes the training bar, erased where it showed no step: on_train_start's, where
        an epoch starts, or where a run resumed at its end trains none."""
        bar = self.train_progress_bar
        bar.leave = bar.n > 0
        bar.close()

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        shown = super().get_metrics(trainer, pl_module).items()
        return {
            key.removeprefix("train/").removesuffix("_step"): value
            for key, value in shown
            if not key.endswith("_epoch")
        }


class StageSummary(ModelSummary):
    """Lightning's model summary at the start of a run, without its FLOPs: they are counted only
    on an example input (a forward at every start), so every row and the total said 0. At
    `max_depth=2` its rows are the detector's stages (backbone, FPN, RPN, ROI heads)."""

    def __init__(self, max_depth: int = 1, **summarize_kwargs):
        # (Lightning checks it only as the run starts, and ended it with a traceback)
        check_number("callbacks.model_summary.max_depth", max_depth, -1, integer=True)
        super().__init__(max_depth, **summarize_kwargs)

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size,
                  total_training_modes, total_flops, **summarize_kwargs) -> None:  # fmt: skip
        names, cells = zip(*((n, v) for n, v in summary_data if n != "FLOPs"), strict=True)
        widths = [
            max(len(name), *map(len, values)) for name, values in zip(names, cells, strict=True)
        ]
        rows = [names, *zip(*cells, strict=True)]
        table = [" | ".join(f"{c:<{w}}" for c, w in zip(row, widths, strict=True)) for row in rows]
        rule = "-" * max(map(len, table))
        totals = [
            (get_human_readable_count(trainable_parameters), "Trainable params"),
            (get_human_readable_count(total_parameters - trainable_parameters), "Frozen params"),
            (f"{model_size:,.1f}", "MB of parameters"),
        ]
        lines = [table[0], rule, *table[1:], rule, *(f"{n:<10}{what}" for n, what in totals)]
        log.info("Model summary\n%s", "\n".join(lines))


def ema_update(
    averaged: list[Tensor],
    current: list[Tensor],
    updates: Tensor,
    decay: float,
    warmup_steps: float,
) -> None:
    """`AveragedModel`'s `multi_avg_fn` (with `decay` and `warmup_steps` bound): average <-
    lerp(average, weights, 1 - d), the decay d = decay * (1 - exp(-n / warmup_steps)) after n
    updates (0 steps: d = decay), so that the first steps' random weights fade fast. One foreach
    kernel per dtype, the decay computed on the device: no host wait."""
    if not averaged[0].is_floating_point():  # counters (BatchNorm's batches tracked)
        torch._foreach_copy_(averaged, current)
        return
    n = updates.to(averaged[0].dtype)
    ramp = 1 - torch.exp(-n / warmup_steps) if warmup_steps > 0 else torch.ones_like(n)
    torch._foreach_lerp_(averaged, current, 1 - decay * ramp)


class WeightEMA(WeightAveraging):
    """An exponential moving average of the weights (and buffers), updated after every
    optimiser step (`ema_update`), on Lightning's `WeightAveraging`: validation during training
    runs on the average, checkpoints hold it as their `state_dict` (the raw weights as
    `current_model_state`, `"weights": "ema"` says so) and a resumed run goes on with the same
    average; at the end of training the model takes the average's weights.

    The average lives on the model's device (moved there when training starts) and its update
    count on the CPU, so that no update waits on the device.
    """

    def __init__(self, decay: float = 0.9998, warmup_steps: float = 2000):
        check_number("ema.decay", decay, 0, 1)
        if decay == 1:  # (the ramp lets the first steps in, then nothing more)
            raise ValueError(
                "ema.decay=1: the average would stop moving, keeping the first steps' weights; "
                "below 1 (0.9998 spans about 5000 steps), or ema=none for no average"
            )
        check_number("ema.warmup_steps", warmup_steps, 0)
        update = functools.partial(ema_update, decay=decay, warmup_steps=warmup_steps)
        super().__init__(use_buffers=True, multi_avg_fn=update)  # a partial: DDP spawn pickles it
        self.decay, self.warmup_steps = decay, warmup_steps

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None  # every optimiser step, never at an epoch's end

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # set up before the strategy moved the model to its device: follow it there
        self._average_model.to(pl_module.device)
        self._average_model.n_averaged = self._average_model.n_averaged.cpu()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if "current_model_state" in checkpoint:
            checkpoint["weights"] = "ema"

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_end(trainer, pl_module)  # the model takes the average's weights
        # training is over: a later validation (train.py's of the best checkpoint) validates
        # the weights it is given, not the average swapped in for them
        self._average_model = None
