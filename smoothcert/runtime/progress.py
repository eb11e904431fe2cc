"""One progress policy for every long loop: a live bar on a terminal, plain lines in a log.

On a terminal (the stream's ``isatty()``), :func:`progress` returns a ``tqdm`` bar. Anywhere
else (a file, a pipe, CI, ``nohup``, a batch job) a bar's carriage-return updates would fill the
log, so it writes a plain line instead: each time another ``fraction`` of the total is done (10%
by default), or ``interval_s`` seconds after the last line when the total is unknown or progress
is slow, and one final line on close. Such a line reads::

    certify: 40/100 ex (40%), 12.3 s elapsed, 3.25 ex/s, about 18 s left

``enabled=False`` gives an object with the same methods that writes nothing.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any, Protocol

from smoothcert.core.errors import ConfigError

__all__ = ["LineProgress", "ProgressBar", "QuietProgress", "progress"]


class ProgressBar(Protocol):
    """What :func:`progress` returns (a ``tqdm`` bar has all of these)."""

    def __iter__(self) -> Iterator[Any]: ...

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None: ...

    def close(self) -> None: ...


class QuietProgress:
    """Iterates and counts, writes nothing."""

    def __init__(self, iterable: Iterable[Any] | None = None) -> None:
        self.iterable = iterable
        self.n = 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.n += 1

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> QuietProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m{s:02d}s" if hours else f"{m}m{s:02d}s"


class LineProgress(QuietProgress):
    """Plain progress lines (no carriage returns) at fractions of the total or at time intervals."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None,
        desc: str,
        unit: str,
        stream: IO[str],
        interval_s: float,
        fraction: float,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(iterable)
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.interval_s, self.clock = interval_s, clock
        self.step = max(1, math.ceil(fraction * total)) if total else None
        self.began = self.last_time = clock()
        self.last_n = 0
        self.next_n = self.step
        self.postfix = ""
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.iterable or ():
                yield item
                self.update(1)
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if (self.next_n is not None and self.n >= self.next_n) or now - self.last_time >= self.interval_s:
            self._line(now)

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**dict(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.n != self.last_n:
                self._line(self.clock())

    def _line(self, now: float) -> None:
        elapsed = now - self.began
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            text = f"{head}{self.n}/{self.total} {self.unit} ({100 * self.n / self.total:.0f}%)"
        else:
            text = f"{head}{self.n} {self.unit}"
        text += f", {_duration(elapsed)} elapsed"
        if elapsed > 0 and self.n > 0:
            rate = self.n / elapsed
            text += f", {rate:.3g} {self.unit}/s"
            if self.total and self.n < self.total:
                text += f", about {_duration((self.total - self.n) / rate)} left"
        if self.postfix:
            text += f" [{self.postfix}]"
        self.stream.write(text + "\n")
        self.stream.flush()
        self.last_n, self.last_time = self.n, now
        if self.step is not None:
            while self.next_n is not None and self.next_n <= self.n:
                self.next_n += self.step


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    stream: IO[str] | None = None,
    interval_s: float = 60.0,
    fraction: float = 0.1,
    leave: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> Any:
    """Progress over ``iterable`` (or, without one, advanced by ``.update(n)`` up to ``total``).

    Returns an object to iterate over (or to ``update``), with ``set_postfix`` and ``close``:
    a ``tqdm`` bar when ``stream`` (default: ``sys.stderr`` at call time) is a terminal; else a
    :class:`LineProgress` writing a plain line each ``fraction`` of ``total`` and at least every
    ``interval_s`` seconds while progress is made, plus a final one on close; with
    ``enabled=False`` a :class:`QuietProgress`. ``leave`` (terminal only): keep the finished bar.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction!r}")
    if not interval_s > 0:
        raise ConfigError(f"interval_s must be > 0, got {interval_s!r}")
    if not enabled:
        return QuietProgress(iterable)
    out: IO[str] = sys.stderr if stream is None else stream
    if _is_terminal(out):
        from tqdm.auto import tqdm

        return tqdm(
            iterable,
            total=total,
            desc=desc or None,
            unit=unit,
            file=out,
            leave=leave,
            dynamic_ncols=True,
            smoothing=0.1,
        )
    return LineProgress(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        stream=out,
        interval_s=interval_s,
        fraction=fraction,
        clock=clock,
    )
