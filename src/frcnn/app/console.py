"""The commands' console log, which shares the terminal with the progress bars."""

import logging


class ConsoleHandler(logging.StreamHandler):
    """Hydra's `console` log handler (conf/hydra/default.yaml), whose lines go above a
    progress bar: on a terminal, each record first clears the line the cursor is on, a bar's,
    which the bar draws again below it at its next refresh. Without it a warning mid-epoch (a
    skipped image, from a DataLoader worker too) was appended to the bar's line, and the bar as
    it was then stayed on the screen. Into a file or a pipe: the lines alone."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self.stream, "isatty", lambda: False)():
            self.stream.write("\r\x1b[K")  # back to the line's start, cleared
        super().emit(record)
