"""Progress of long work: a bar in a terminal, one line per stage otherwise, nothing when quiet.

Training (tuning per family, each repeat and fold, the bootstrap models), evaluation, monitoring and
scoring of large files say where they are, with the elapsed time and an estimate of what is left.
The CLI sets the mode once (`configure`); library code only calls `steps(...)`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Literal, TextIO, TypeVar

T = TypeVar("T")
Mode = Literal["auto", "bar", "lines", "quiet"]

_mode: Mode = "auto"
_stream: TextIO | None = None


def configure(mode: Mode = "auto", stream: TextIO | None = None) -> None:
    """`auto`: a bar when the stream is a terminal, else lines; `quiet`: nothing (--quiet)."""
    global _mode, _stream
    _mode, _stream = mode, stream


def _resolved() -> tuple[Mode, TextIO]:
    stream = _stream or sys.stderr
    if _mode != "auto":
        return _mode, stream
    return ("bar" if getattr(stream, "isatty", lambda: False)() else "lines"), stream


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class Stage:
    """One stage of `total` steps; `advance()` after each step, from the thread that owns the stage."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, max(int(total), 0), 0
        self.mode, self.stream = _resolved()
        self.t0 = time.monotonic()
        self._bar = None
        self._next_line = 0.0
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=label, file=self.stream, leave=True,
                             bar_format="{desc}: {bar} {n_fmt}/{total_fmt} [{elapsed} elapsed, {remaining} left]")
        elif self.mode == "lines":
            self._write(f"{label}: {self.total} steps ...")

    def _write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def eta(self) -> float | None:
        """Seconds left, from the mean time per finished step (None before the first)."""
        if not self.done:
            return None
        return (time.monotonic() - self.t0) / self.done * (self.total - self.done)

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "lines":
            elapsed = time.monotonic() - self.t0
            # at most one line each 10% (and each 30 s), so a log stays readable
            step = max(1, self.total // 10)
            if self.done < self.total and (self.done % step == 0 or elapsed >= self._next_line):
                self._next_line = elapsed + 30
                left = self.eta()
                self._write(f"{self.label}: {self.done}/{self.total} in {_clock(elapsed)}"
                            + (f", about {_clock(left)} left" if left is not None else ""))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "lines":
            self._write(f"{self.label}: done, {self.done}/{self.total} in {_clock(time.monotonic() - self.t0)}")

    def __enter__(self) -> "Stage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stage(label: str, total: int) -> Stage:
    return Stage(label, total)


def steps(items: Iterable[T], label: str, total: int | None = None) -> Iterator[T]:
    """Iterate over `items`, advancing a stage after each (for a loop or joblib's generator output)."""
    if total is None:
        total = len(items)  # type: ignore[arg-type]
    with Stage(label, total) as s:
        for item in items:
            yield item
            s.advance()
