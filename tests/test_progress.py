"""Progress bars: tqdm's redraws on a terminal, whole periodic lines in a log file."""

from __future__ import annotations

import io

import pytest

from hassod import _progress
from hassod._progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Clock:
    """tqdm's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> _Clock:
    import tqdm.std

    fake = _Clock()
    monkeypatch.setattr(tqdm.std, "time", fake)
    return fake


def _run(stream, monkeypatch, clock: _Clock, steps: int, seconds_per_step: float, **options):
    monkeypatch.setattr("sys.stderr", stream)
    bar = progress_bar(total=steps, desc="work", unit="img", **options)
    for _ in range(steps):
        clock.now += seconds_per_step
        bar.update(1)
    bar.close()
    return stream.getvalue()


def test_a_log_file_gets_one_whole_line_per_interval_and_the_last_state(monkeypatch, clock):
    text = _run(io.StringIO(), monkeypatch, clock, steps=100, seconds_per_step=1.0)
    assert "\r" not in text
    lines = text.splitlines()
    # 100 s of work at one line per 30 s: three periodic lines, then the end (no start line)
    assert [line[:10] for line in lines] == ["work:  30%", "work:  60%", "work:  90%", "work: 100%"]
    assert "100/100" in lines[-1]
    assert all(len(line) <= 100 for line in lines)


def test_a_short_bar_in_a_log_file_is_one_line_its_final_state(monkeypatch, clock):
    """tqdm draws at creation, on reset and on set_description: in a log that made a bar of
    a second several lines, none of them its end (hassod evaluate's 70 lines)."""
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    bar = progress_bar(total=None, desc="run: loading", unit="step", leave=False)
    bar.reset(10)
    bar.set_description_str("run: matching")
    for _ in range(10):
        clock.now += 0.1
        bar.update()
    bar.set_description_str("run: accumulating")
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("run: accumulating: 100%"), lines
    assert "10/10" in lines[0]


def test_a_log_file_gets_a_final_state_logged_at_its_interval_once(monkeypatch, clock):
    text = _run(io.StringIO(), monkeypatch, clock, steps=2, seconds_per_step=30.0)
    lines = text.splitlines()
    assert [line[:10] for line in lines] == ["work:  50%", "work: 100%"], lines


def test_nested_bars_in_a_log_file_write_no_cursor_moves(monkeypatch, clock):
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    outer = progress_bar(total=2, desc="outer")
    for _ in range(2):
        with progress_bar(total=3, desc="inner") as inner:
            for _ in range(3):
                clock.now += 20.0
                inner.update()
        outer.update()
    outer.close()
    text = stream.getvalue()
    assert "\x1b" not in text and "\r" not in text
    assert text.count("inner: 100%") == 2 and text.splitlines()[-1].startswith("outer: 100%")


def test_a_log_file_keeps_the_last_line_of_a_bar_that_clears_itself(monkeypatch, clock):
    text = _run(io.StringIO(), monkeypatch, clock, steps=5, seconds_per_step=0.1, leave=False)
    assert text.splitlines()[-1].startswith("work: 100%")


def test_a_terminal_gets_tqdms_redraws(monkeypatch, clock):
    text = _run(_Terminal(), monkeypatch, clock, steps=100, seconds_per_step=1.0, leave=False)
    assert text.count("\r") > 50  # redrawn in place, at tqdm's 0.1 s pace
    assert text.endswith("\r")  # and cleared


def test_disabled_bar_writes_nothing(monkeypatch, clock):
    assert _run(io.StringIO(), monkeypatch, clock, 10, 1.0, enabled=False) == ""


def test_streams_without_isatty_count_as_logs():
    assert not _progress._is_terminal(object())
    closed = io.StringIO()
    closed.close()
    assert not _progress._is_terminal(closed)
