"""smoothcert.runtime.progress: a bar on a terminal, plain lines (no carriage returns) in a log."""

from __future__ import annotations

import io

import pytest

from smoothcert.runtime.progress import LineProgress, QuietProgress, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_writes_a_plain_line_per_tenth_and_no_carriage_return():
    out = io.StringIO()  # isatty() is False, as for a log file or a pipe
    bar = progress(range(100), desc="certify", unit="ex", stream=out)
    assert isinstance(bar, LineProgress)
    assert list(bar) == list(range(100))
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10, lines  # 10%, 20%, ..., 100%: one line each, none repeated at close
    assert lines[0].startswith("certify: 10/100 ex (10%)") and lines[-1].startswith("certify: 100/100 ex (100%)")
    # positive control: on a terminal the same loop draws a tqdm bar, with carriage returns
    tty = Terminal()
    assert list(progress(range(100), desc="certify", unit="ex", stream=tty)) == list(range(100))
    assert "\r" in tty.getvalue()


def test_manual_updates_with_a_total_and_a_postfix():
    out = io.StringIO()
    bar = progress(total=7, unit="ex", stream=out, fraction=0.5)  # a line each 4 examples, and at close
    for _ in range(3):
        bar.update(2)
    bar.set_postfix(loss="0.123")
    bar.update(1)
    bar.close()
    bar.close()  # closing twice writes nothing more
    lines = out.getvalue().splitlines()
    assert [ln.split(" ex")[0] for ln in lines] == ["4/7", "7/7"], lines
    assert lines[-1].endswith("[loss=0.123]") and "\r" not in out.getvalue()


def test_without_a_total_lines_come_at_time_intervals():
    now = [0.0]
    out = io.StringIO()
    bar = progress(total=None, unit="batch", stream=out, interval_s=10.0, clock=lambda: now[0])
    for _ in range(25):  # one batch per 2 s of the fake clock: a line at 10 s, 20 s, ..., 50 s
        now[0] += 2.0
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert [ln.split(" batch")[0] for ln in lines] == ["5", "10", "15", "20", "25"], lines
    assert "0.5 batch/s" in lines[-1]


def test_disabled_progress_writes_nothing_but_still_iterates():
    bar = progress(range(5), total=5, enabled=False, stream=io.StringIO())
    assert isinstance(bar, QuietProgress) and list(bar) == [0, 1, 2, 3, 4]
    bar.update(3)
    bar.set_postfix(a=1)
    bar.close()


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 0"):
        progress(range(3), fraction=0, stream=io.StringIO())
    with pytest.raises(ValueError, match="interval_s must be > 0, got -1"):
        progress(range(3), interval_s=-1, stream=io.StringIO())
