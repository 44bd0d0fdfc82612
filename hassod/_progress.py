"""Progress bars for long jobs: tqdm on a terminal, plain timestamped lines in a log file.

On a terminal tqdm redraws its bar in place several times a second. Written to a log file (a
batch job's stderr) the same redraws pile up as one line of carriage returns that grows by
kilobytes a minute; there each bar prints a whole line every :data:`LOG_INTERVAL` seconds
instead, plus its final state once when it closes, so a log reads like a training log. tqdm's
other redraws (at creation, on ``reset`` or ``set_description``) print nothing there: a bar
done within :data:`LOG_INTERVAL` is one line, its final state.
"""

from __future__ import annotations

import functools
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


@functools.cache
def _log_bar() -> type:
    """tqdm printing a line when :data:`LOG_INTERVAL` has passed since its last one (or its
    start), and its final state once when it closes; other redraws print nothing."""
    from tqdm import tqdm

    class LogBar(tqdm):
        _log_last: tuple | None = None  # (time, state) of the last line written
        _log_closing = False

        def display(self, msg=None, pos=None):
            # msg: tqdm clearing the bar ("") or its "(more hidden)" line; no start_t yet: the
            # draw at creation, before anything is done. Neither is worth a line in a log.
            if msg is not None or not hasattr(self, "start_t"):
                return True
            now = self._time()
            state = (self.n, self.total, self.desc)
            if self._log_closing:
                if self._log_last is not None and self._log_last[1] == state:
                    return True  # the final state is already the last line
            elif now - (self._log_last[0] if self._log_last else self.start_t) < LOG_INTERVAL:
                return True
            self.sp(str(self))  # no cursor moves (nested bars): each line stands alone
            self._log_last = (now, state)
            return True

        def close(self):
            self._log_closing = True
            super().close()

    return LogBar


def progress_bar(iterable: Any = None, *, enabled: bool = True, **options: Any):
    """A tqdm bar on stderr (``options`` are tqdm's: ``total``, ``desc``, ``unit``, ...),
    shown as a line every :data:`LOG_INTERVAL` seconds plus its final state when stderr is not
    a terminal (each bar's last line stays, even with ``leave=False``); ``enabled=False``
    shows nothing."""
    from tqdm import tqdm

    stream, bar = sys.stderr, tqdm
    if not _is_terminal(stream):
        stream, bar = _LogLines(stream), _log_bar()
        options.setdefault("mininterval", LOG_INTERVAL)
        options.pop("dynamic_ncols", None)  # no terminal to measure
        options.setdefault("ncols", 100)
        options["leave"] = True  # a log keeps each bar's final line: how long the step took
    return bar(iterable, file=stream, disable=not enabled, **options)
