"""Progress bars for long jobs: tqdm on a terminal, plain timestamped lines in a log file.

On a terminal tqdm redraws its bar in place several times a second. Written to a log file (a
batch job's stderr) the same redraws pile up as one line of carriage returns that grows by
kilobytes a minute; there each bar prints a whole line every :data:`LOG_INTERVAL` seconds
instead, plus its final state, so a log reads like a training log.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

LOG_INTERVAL = 30.0  # seconds between a bar's lines in a log file


class _LogLines:
    """A stream for tqdm that turns its in-place redraws into whole lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()
        if line:  # tqdm clears a bar by writing blanks: nothing to log
            self.stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a stream without isatty, or a closed one
        return False


def progress_bar(iterable: Any = None, *, enabled: bool = True, **options: Any):
    """A tqdm bar on stderr (``options`` are tqdm's: ``total``, ``desc``, ``unit``, ...),
    shown as periodic lines when stderr is not a terminal (each bar's last line stays, even
    with ``leave=False``); ``enabled=False`` shows nothing."""
    from tqdm import tqdm

    stream = sys.stderr
    if not _is_terminal(stream):
        stream = _LogLines(stream)
        options.setdefault("mininterval", LOG_INTERVAL)
        options.pop("dynamic_ncols", None)  # no terminal to measure
        options.setdefault("ncols", 100)
        options["leave"] = True  # a log keeps each bar's final line: how long the step took
    return tqdm(iterable, file=stream, disable=not enabled, **options)
