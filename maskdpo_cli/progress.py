"""Progress bars and messages on stderr; stdout carries only records."""

from __future__ import annotations

import logging
import sys
import warnings

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

stderr = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second, in the unit of the task (questions/s, tokens/s, pairs/s)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-" if speed is None else f"{speed:.2f} {self.unit}/s", style="cyan")


def progress_bar(unit: str = "items") -> Progress:
    """A bar with count, rate, elapsed time and ETA on stderr."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=stderr,
    )


def keep_library_logs_off_stdout() -> None:
    """stdout carries records only; DeepSpeed would write its own log there.

    When deepspeed is installed, transformers imports it as soon as a model loads (sample,
    eval, train), and DeepSpeed's logger gets a handler on stdout at that import, with a
    line about which accelerator it detected. That handler is bound before we could move it,
    so its records are caught at the logger instead: the detection notice is dropped (which
    accelerator runs is ours to say), other warnings and errors go to stderr. Its modules'
    torch.jit.script deprecation warnings would precede every error line: ignored.
    """
    to_stderr = logging.StreamHandler(sys.stderr)

    def divert(record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING and record.filename != "real_accelerator.py":
            to_stderr.handle(record)
        return False  # never to DeepSpeed's own stdout handler

    logging.getLogger("DeepSpeed").addFilter(divert)
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
