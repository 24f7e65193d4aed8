"""The console log and the progress bar on one terminal."""

import io
import logging
import logging.config

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from frcnn.training.callbacks import ProgressBar
from tests.app.helpers import composed
from tests.helpers import screen


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class SkipsAnImage(L.LightningModule):
    """A linear layer whose second step logs a warning mid-epoch, as a data source does for an
    image it skips."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        if batch_idx == 1:
            logging.getLogger("frcnn.data.sources").warning("photo.jpg: unreadable, skipped")
        loss = self.net(batch[0]).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_with_console(tmp_path, monkeypatch, stream: io.StringIO) -> str:
    """What a run of three steps prints to `stream`: its bar, and the warning through the
    console handler that the commands' Hydra config names."""
    path = composed(tmp_path).hydra.job_logging.handlers.console["class"]
    handler = logging.config.BaseConfigurator({}).resolve(path)(stream)  # as Hydra resolves it
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("frcnn.data.sources")
    logger.addHandler(handler)
    monkeypatch.setattr("sys.stdout", stream)  # where Lightning's bar writes
    try:
        trainer = L.Trainer(
            accelerator="cpu", logger=False, enable_model_summary=False, max_epochs=1,
            callbacks=[ProgressBar(leave=True)], enable_checkpointing=False,
            default_root_dir=tmp_path,
        )  # fmt: skip
        loader = DataLoader(TensorDataset(torch.randn(12, 3)), batch_size=4)
        trainer.fit(SkipsAnImage(), loader)
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_a_warning_mid_epoch_goes_above_the_bar_not_onto_its_line(tmp_path, monkeypatch):
    lines = [line for line in screen(fit_with_console(tmp_path, monkeypatch, Terminal())) if line]
    assert lines[0] == "WARNING photo.jpg: unreadable, skipped"
    assert len(lines) == 2 and lines[1].startswith("Epoch 0: 100%|"), lines


def test_into_a_file_or_a_pipe_the_log_has_no_terminal_codes(tmp_path, monkeypatch):
    printed = fit_with_console(tmp_path, monkeypatch, io.StringIO())
    assert "\x1b[K" not in printed and "WARNING photo.jpg: unreadable, skipped\n" in printed
