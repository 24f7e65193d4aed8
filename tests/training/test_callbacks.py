"""The training callbacks' own rules, in one process (the commands that use them, with real
signals, DDP and torchrun, are tested in tests/app/test_train.py)."""

import signal

import lightning as L
import pytest
import torch.distributed as dist
from lightning.pytorch.utilities.exceptions import SIGTERMException

from frcnn.training.callbacks import Preemption


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
