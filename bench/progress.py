"""A progress bar per scenario on stderr: redrawn in place on a terminal, plain lines otherwise."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

BAR = 24


class Progress:
    """Counts a scenario's planned steps; `with progress.step("what"):` wraps each one."""

    def __init__(self, name: str, total: int, stream: TextIO | None = None) -> None:
        self.name = name
        self.total = max(1, total)
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        # A log file or CI output gets one line per step: a \r-redrawn bar would be one long
        # line full of control characters there.
        self._tty = self._stream.isatty()
        self._start = time.monotonic()

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        if not self._tty:
            print(f"{self.name} [{self.done + 1}/{self.total}] {what}", file=self._stream, flush=True)
        self._draw(what)
        yield
        self.done = min(self.total, self.done + 1)
        self._draw(what)

    def _draw(self, what: str) -> None:
        if not self._tty:
            return
        elapsed = time.monotonic() - self._start
        filled = BAR * self.done // self.total
        line = (f"{self.name:<15} [{'#' * filled}{'.' * (BAR - filled)}] "
                f"{self.done}/{self.total} {elapsed:5.0f} s  {what}")
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self._stream.write("\r" + line[:width].ljust(width))
        self._stream.flush()

    def close(self, failed: bool = False) -> None:
        """End the bar with a summary line."""
        elapsed = time.monotonic() - self._start
        outcome = "FAILED" if failed else "done"
        summary = f"{self.name}: {outcome}, {self.done}/{self.total} steps in {elapsed:.1f} s"
        if self._tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            self._stream.write("\r" + summary.ljust(width) + "\n")
        else:
            self._stream.write(summary + "\n")
        self._stream.flush()
