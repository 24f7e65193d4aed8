"""The weight EMA: the hand-computed average of every step, in the checkpoint, resumed."""

import math
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from frcnn.training.callbacks import WeightEMA
from tests.app.helpers import ROOT, process_env

DECAY, WARMUP = 0.5, 4.0


class Small(L.LightningModule):
    """A linear layer and a BatchNorm (float running statistics, an integer counter)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        return self.net(x).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def data():
    """Three batches of four."""
    inputs = torch.randn(12, 3, generator=torch.Generator().manual_seed(1))
    return DataLoader(TensorDataset(inputs), batch_size=4)


class Record(L.Callback):
    """The raw weights (and buffers) after every optimiser step."""

    def __init__(self):
        self.states = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.states.append({k: v.clone() for k, v in pl_module.state_dict().items()})


def trainer(tmp_path, *callbacks, **kwargs):
    return L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, callbacks=list(callbacks), **kwargs,
    )  # fmt: skip


def hand_ema(states):
    """average_1 = w_1, then average_k = d average_(k-1) + (1 - d) w_k with the decay
    d = DECAY (1 - exp(-(k-1) / WARMUP)); integer buffers are copied."""
    average = {k: v.clone() for k, v in states[0].items()}
    for n, state in enumerate(states[1:], start=1):
        d = DECAY * (1 - math.exp(-n / WARMUP))
        for key, value in state.items():
            if value.is_floating_point():
                average[key] = d * average[key] + (1 - d) * value
            else:
                average[key] = value.clone()
    return average


def test_the_average_is_the_hand_computed_ema_of_every_step_and_the_checkpoints_weights(tmp_path):
    record = Record()
    saved = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    module = Small()
    trainer(tmp_path, WeightEMA(DECAY, WARMUP), record, saved, max_steps=3).fit(module, data())
    assert len(record.states) == 3
    expected = hand_ema(record.states)
    checkpoint = torch.load(
        saved.best_model_path or next(tmp_path.glob("*.ckpt")), weights_only=True
    )
    assert checkpoint["weights"] == "ema"
    for key, value in expected.items():
        assert torch.allclose(checkpoint["state_dict"][key], value, atol=1e-6), key
        assert torch.equal(checkpoint["current_model_state"][key], record.states[-1][key])
        # at the end of training the model takes the average
        assert torch.allclose(module.state_dict()[key], value, atol=1e-6), key
    assert not torch.equal(expected["net.0.weight"], record.states[-1]["net.0.weight"])


def test_a_resumed_run_goes_on_with_the_same_average(tmp_path):
    """Two epochs straight, or one, then a resume from its checkpoint for the second: the same
    weights and average (the update count, so the decay's warm-up, goes on too)."""
    straight = Small()
    trainer(tmp_path / "a", WeightEMA(DECAY, WARMUP), max_epochs=2).fit(straight, data())
    saved = ModelCheckpoint(dirpath=tmp_path / "b", every_n_epochs=1)
    trainer(tmp_path / "b", WeightEMA(DECAY, WARMUP), saved, max_epochs=1).fit(Small(), data())
    resumed = Small()
    record = Record()
    trainer(tmp_path / "c", WeightEMA(DECAY, WARMUP), record, max_epochs=2).fit(
        resumed, data(), ckpt_path=saved.best_model_path
    )
    assert len(record.states) == 3  # the second epoch only
    for key, value in straight.state_dict().items():
        assert torch.allclose(resumed.state_dict()[key], value, atol=1e-6), key


def test_impossible_settings_fail_naming_the_key():
    with pytest.raises(ValueError, match=r"ema.decay=1.5: must lie in \[0, 1\]"):
        WeightEMA(decay=1.5)
    with pytest.raises(ValueError, match=r"ema.decay=1: the average would stop moving"):
        WeightEMA(decay=1)  # (torch's and Lightning's take it)
    with pytest.raises(ValueError, match=r"ema.warmup_steps=-1: must lie in \[0, inf\)"):
        WeightEMA(warmup_steps=-1)


class SameOnEveryRank(L.Callback):
    """At the end of training, every process's average must equal rank 0's (all-gathered)."""

    def on_train_end(self, trainer, pl_module):
        ema = next(c for c in trainer.callbacks if isinstance(c, WeightEMA))
        flat = torch.cat([p.detach().flatten() for p in ema._average_model.parameters()])
        everyone = pl_module.all_gather(flat)  # (world, N)
        assert everyone.shape[0] == 2 and torch.equal(everyone[0], everyone[1])
        assert int(ema._average_model.n_averaged) == trainer.global_step


class Sharded(Small):
    """Each process gets other inputs (DDP's sampler): only the all-reduce keeps them equal."""

    def train_dataloader(self):
        return data()


def ddp_fit(folder: str) -> None:
    """`Sharded` trained by two forked processes (`ddp_fork`) with the EMA; SameOnEveryRank
    checks the averages (before the EMA: at train end it hands its average to the model)."""
    run = trainer(
        Path(folder), SameOnEveryRank(), WeightEMA(DECAY, WARMUP), max_steps=3, devices=2,
        strategy="ddp_fork",
    )  # fmt: skip
    run.fit(Sharded())


def test_under_ddp_every_process_keeps_the_same_average(tmp_path):
    """Two processes (Lightning's DDP on the CPU, gloo): the weights stay equal through the
    gradient all-reduce, so do the averages, updated at the same steps. The processes are forked
    (spawned ones would import torch and Lightning again) from a Python of their own: a fork of
    a test process that has run a compiled model's backward fails ("Unable to handle autograd's
    threading in combination with fork-based multiprocessing"), and Lightning sets
    MASTER_PORT, WORLD_SIZE, ... in the process it forks from."""
    code = f"from tests.training.test_ema import ddp_fit; ddp_fit({str(tmp_path)!r})"
    ran = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=process_env(), capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
