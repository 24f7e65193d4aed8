"""The training callbacks' own rules, in one process (the commands that use them, with real
signals, DDP and torchrun, are tested in tests/app/test_train.py)."""

import signal

import lightning as L
import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import DataLoader, TensorDataset

from frcnn.training.callbacks import (
    EarlyStopping,
    LastCheckpoint,
    Preemption,
    ProgressBar,
    RunCheckpoint,
    StageSummary,
    StopOnDivergence,
)
from frcnn.training.checkpoint import AtomicCheckpointIO
from tests.helpers import screen


@pytest.fixture
def one_process_group(monkeypatch):
    """A gloo process group of this process alone (`dist.group.WORLD`), and this process's
    signal handlers put back afterwards (the callback replaces them). Every tensor all-reduced
    in it is kept until the group is gone: torch 2.5's gloo worker thread, dropping the last
    reference to one, waits for the GIL while it holds the lock that the group's destructor
    takes with the GIL held (a deadlock that hung the lowest versions' CI once)."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    kept, all_reduce = [], dist.all_reduce

    def keeping(tensor, *args, **kwargs):
        kept.append(tensor)
        return all_reduce(tensor, *args, **kwargs)

    monkeypatch.setattr(dist, "all_reduce", keeping)
    yield  # no reference to the group that outlives the test (it would be the last)
    dist.destroy_process_group()  # the group's destructor, while `kept` holds the tensors
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def test_a_signal_that_comes_while_the_processes_agree_stops_training_after_the_next_step(
    one_process_group, monkeypatch
):
    """After each step the processes all-reduce whether any got a signal; that waits for the
    slowest. A SIGTERM that comes during it is taken at the next step, not dropped (it was: the
    process trained on until torchrun killed it)."""
    preemption = Preemption()
    preemption.group = dist.group.WORLD  # what on_train_start builds when there are several
    preemption.on_train_start(L.Trainer(accelerator="cpu", logger=False), None)
    all_reduce = dist.all_reduce

    def signalled_during(tensor, **kwargs):
        work = all_reduce(tensor, **kwargs)
        signal.raise_signal(signal.SIGTERM)  # its handler runs before raise_signal returns
        assert preemption.received[signal.SIGTERM]
        return work

    monkeypatch.setattr(dist, "all_reduce", signalled_during)
    preemption.on_train_batch_end(None, None, None, None, 0)  # none before this step: trains on
    assert preemption.stopped_by is None
    with pytest.raises(SIGTERMException):
        preemption.on_train_batch_end(None, None, None, None, 1)
    assert preemption.stopped_by == signal.SIGTERM


class Linear(L.LightningModule):
    """A linear layer that trains and validates (its validation loss logged)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        return self.net(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.net(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("last_first", [True, False])
def test_last_ckpt_is_no_second_name_of_a_save_before_its_validation(tmp_path, last_first):
    """A checkpoint saved every 2 steps (in `on_train_batch_end`) and a validation at step 2:
    last.ckpt, written at the validation's end, holds the state after it (the validation
    counted), not a second name of step 2's earlier file, whichever callback comes first (the
    one listed first once linked to the file of the hook before)."""
    last = LastCheckpoint(str(tmp_path))
    every_2 = RunCheckpoint(
        dirpath=str(tmp_path), every_n_train_steps=2, save_top_k=-1, filename="{step}"
    )
    loader = DataLoader(TensorDataset(torch.randn(12, 3)), batch_size=4)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[last, every_2] if last_first else [every_2, last], max_steps=2,
        val_check_interval=2, limit_val_batches=1, plugins=[AtomicCheckpointIO()],
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(Linear(), loader, loader)
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["last.ckpt", "step=2.ckpt"]
    assert not (tmp_path / "last.ckpt").samefile(tmp_path / "step=2.ckpt")

    def validations(name):
        loops = torch.load(tmp_path / name, weights_only=True)["loops"]["fit_loop"]
        return loops["epoch_loop.val_loop.batch_progress"]["total"]["completed"]

    assert validations("step=2.ckpt") == 0 and validations("last.ckpt") == 1


class Shown(Linear):
    """Linear, with its figures on the progress bar as DetectorModule logs them."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss", loss, prog_bar=True, on_epoch=True)
        self.log("train/images_per_s", 10.0 + batch_idx, prog_bar=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/map_50", 0.25, prog_bar=True)


# Lightning's warnings of what the test does on purpose: it resumes without the callback that
# wrote the checkpoint, mid-epoch, in the folder of the first run
@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")
@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended")
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_the_progress_bar_keeps_a_line_per_epoch_with_the_steps_figures_by_short_names(
    capsys, tmp_path
):
    """Lightning's bar showed each figure twice (`train/loss_step`, `train/loss_epoch`): too
    long for a terminal's line. With `leave`, each epoch's last line stays, and no other; a run
    resumed mid-epoch goes on with that epoch's line, one resumed where it ended shows none."""
    loader = DataLoader(TensorDataset(torch.randn(12, 3)), batch_size=4)  # 3 steps an epoch

    def lines(ckpt_path=None, *callbacks):
        trainer = L.Trainer(
            accelerator="cpu", logger=False, enable_model_summary=False, max_epochs=2,
            callbacks=[ProgressBar(leave=True), *callbacks], limit_val_batches=1,
            default_root_dir=tmp_path,
        )  # fmt: skip
        trainer.fit(Shown(), loader, loader, ckpt_path=ckpt_path)
        return [line for line in screen(capsys.readouterr().out) if line]

    every_2 = ModelCheckpoint(tmp_path, "{step}", every_n_train_steps=2, save_top_k=-1)
    trained = lines(None, every_2)
    assert len(trained) == 2, trained
    for epoch, line in enumerate(trained):
        assert line.startswith(f"Epoch {epoch}: 100%|") and "| 3/3 [" in line, line
        figures = line.split("it/s, ")[1].rstrip("]")
        names = [figure.split("=")[0] for figure in figures.split(", ")]
        assert names == ["loss", "images_per_s", "val/map_50"], line
        assert "images_per_s=12.0" in line and "val/map_50=0.250" in line, line
    resumed = lines(tmp_path / "step=2.ckpt")
    assert [line[:14] for line in resumed] == ["Epoch 0: 100%|", "Epoch 1: 100%|"], resumed
    assert "| 3/3 [" in resumed[0], resumed
    assert lines(tmp_path / "step=6.ckpt") == []  # (6: the run's last step)


@pytest.mark.parametrize(
    ("build", "told"),
    [
        (lambda: StopOnDivergence(factor=1), r"divergence.factor=1: must lie in \(1, inf\)$"),
        (lambda: StopOnDivergence(window=2.5), r"divergence.window=2.5: must be an integer in"),
        # a negative rate hid the bar as 0 does; Hydra reads `leave=no` as a string (true)
        (lambda: ProgressBar(refresh_rate=-1), r"progress_bar.refresh_rate=-1: must lie in \[0,"),
        (lambda: ProgressBar(leave="no"), r"progress_bar.leave='no': must be true or false$"),
        # Lightning checked it as the run started, with a traceback
        (lambda: StageSummary(max_depth=-2), r"model_summary.max_depth=-2: must lie in \[-1, inf"),
        # a negative min_delta took a fall of the metric for a rise: no run stopped
        (
            lambda: EarlyStopping("val/map", min_delta=-1),
            r"early_stopping.min_delta=-1: must lie in",
        ),
        (
            lambda: EarlyStopping("val/map", patience=-1),
            r"early_stopping.patience=-1: must lie in \[0",
        ),
    ],
)
def test_a_callback_setting_that_would_be_misread_is_refused_naming_it(build, told):
    with pytest.raises(ValueError, match=r"^callbacks\." + told):
        build()


def test_the_checked_callbacks_take_lightnings_values_at_their_bounds():
    assert ProgressBar(refresh_rate=0).is_disabled  # Lightning's way to hide the bar
    assert StageSummary(max_depth=-1)._max_depth == -1  # every layer
    stopping = EarlyStopping("val/map", min_delta=0.001, patience=0, mode="max")
    assert (stopping.min_delta, stopping.patience) == (0.001, 0)
