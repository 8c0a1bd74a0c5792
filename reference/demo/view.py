"""The live view: redrawn in place on a terminal, one line per second otherwise."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from typing import TextIO

from reference.demo.status import ProxyStatus
from reference.demo.traffic import BREAKER_OPEN, FAILED, Tally

__all__ = ["Frame", "LiveView", "Palette"]

OUTCOMES = ("v1", "v2", "v3", BREAKER_OPEN, FAILED)


class Palette:
    """ANSI colours, or nothing when colour is off (a pipe, --no-color, NO_COLOR)."""

    CODES = {"closed": "32", "half_open": "33", "open": "31", "bold": "1", "dim": "2"}

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def paint(self, text: str, style: str) -> str:
        code = self.CODES.get(style)
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled and code else text


@dataclass(frozen=True)
class Frame:
    """Everything one redraw shows."""

    title: str
    elapsed: float
    duration: float
    stage: str
    tally: Tally
    status: ProxyStatus


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:5.1f}%" if whole else "    -"


def _breakers(status: ProxyStatus, palette: Palette) -> list[str]:
    """One `upstream state` entry per upstream; with several proxies, each state's count."""
    if not status.reachable:
        return [palette.paint("admin listener not answering", "open")]
    entries = []
    for upstream, states in status.states_by_upstream().items():
        # One proxy (sidecar): its state. Several (node agent, one per app): "open x3".
        shown = ", ".join(
            palette.paint(state if len(states) == 1 and n == 1 else f"{state} x{n}", state)
            for state, n in sorted(states.items())
        )
        entries.append(f"{upstream} {shown}")
    return entries or ["(no breakers yet)"]


def _version(status: ProxyStatus) -> str:
    return "?" if status.version is None else str(status.version)


def render(frame: Frame, palette: Palette) -> list[str]:
    """The lines of the live view for a terminal."""
    tally, recent = frame.tally, frame.tally.last_window()
    total_n, recent_n = sum(tally.total.values()), sum(recent.values())
    lines = [
        palette.paint(f"{frame.title}   {frame.elapsed:5.1f} s of {frame.duration:g} s", "bold"),
        f"stage     {frame.stage}",
        f"config    version {_version(frame.status)}",
        palette.paint(f"{'':12}{'total':>14}{'last second':>16}", "dim"),
    ]
    for outcome in OUTCOMES:
        total, last = tally.total[outcome], recent[outcome]
        lines.append(f"  {outcome:<10}{total:>8}{_share(total, total_n)}"
                     f"{last:>10}{_share(last, recent_n)}")
    lines.append(f"requests  {tally.served} served, {tally.failed} failed")
    # One line per upstream keeps the view narrower than a default 80-column terminal.
    for n, entry in enumerate(_breakers(frame.status, palette)):
        lines.append(f"{'breakers' if n == 0 else '':<10}{entry}")
    return lines


def render_line(frame: Frame, palette: Palette) -> str:
    """The one-line form for logs and pipes."""
    recent: Counter[str] = frame.tally.last_window()
    split = " ".join(f"{outcome} {recent[outcome]}" for outcome in OUTCOMES)
    return (f"[{frame.elapsed:5.1f}s] config v{_version(frame.status)} | last 1 s: {split} | "
            f"served {frame.tally.served} failed {frame.tally.failed} | "
            f"breakers {', '.join(_breakers(frame.status, palette))}")


class LiveView:
    """Prints timeline events as they happen and keeps the live view below them."""

    def __init__(self, out: TextIO = sys.stdout, *, color: bool = True,
                 line_every: float = 1.0) -> None:
        self.out = out
        self.tty = out.isatty()
        self.palette = Palette(color and self.tty)
        self._drawn = 0  # lines of the view currently on screen, to erase before a redraw
        self._line_every = line_every
        self._next_line = 0.0

    def event(self, elapsed: float, text: str) -> None:
        """A timeline event: stays on screen (and in a log) above the view."""
        self._erase()
        self.out.write(f"{self.palette.paint(f'[{elapsed:5.1f}s]', 'dim')} {text}\n")
        self.out.flush()

    def show(self, frame: Frame) -> None:
        """Redraw the view (terminal) or print one line per `line_every` seconds (pipe)."""
        if self.tty:
            self._erase()
            lines = render(frame, self.palette)
            self.out.write("\n".join(lines) + "\n")
            self._drawn = len(lines)
        elif frame.elapsed >= self._next_line:
            self.out.write(render_line(frame, self.palette) + "\n")
            self._next_line = frame.elapsed + self._line_every
        self.out.flush()

    def freeze(self) -> None:
        """Leave the last view on screen: what follows prints below it."""
        self._drawn = 0

    def _erase(self) -> None:
        if self._drawn:
            # Cursor up to the view's first line, then clear to the end of the screen.
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0
