"""What a lab scenario is, and the registry `python -m bench` runs them from.

A scenario module defines a `Scenario` subclass and decorates it with `@register`; importing the
module (bench/scenarios/__init__.py imports each one) is what registers it. The harness then
does everything else: the progress bar, results.json, the Markdown table and the SVG charts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .progress import Progress


@dataclass(frozen=True)
class Table:
    """One results table: headers with units, rows of already formatted cells, notes below."""

    headers: list[str]
    rows: list[list[str]]
    # One letter per column, l or r: text to the left, numbers to the right.
    align: str
    notes: list[str] = field(default_factory=list)


# --8<-- [start:scenario]
class Scenario:
    """One question the lab measures; subclasses set the names and fill in the four methods."""

    name: ClassVar[str]  # the key in results.json and the stem of its output files
    title: ClassVar[str]

    def settings(self, quick: bool) -> dict[str, Any]:
        """The knobs for a full or a quick run (recorded in results.json with the numbers)."""
        raise NotImplementedError

    def steps(self, settings: dict[str, Any]) -> int:
        """How many `progress.step` calls `run` will make, for the progress bar."""
        raise NotImplementedError

    def run(self, settings: dict[str, Any], progress: Progress) -> dict[str, Any]:
        """Measure; return JSON-ready results (numbers rounded, keys in a fixed order)."""
        raise NotImplementedError

    def table(self, result: dict[str, Any]) -> Table:
        """The one Markdown table for this scenario's results."""
        raise NotImplementedError

    def charts(self, result: dict[str, Any]) -> dict[str, str]:
        """SVG charts, by file stem (written as `<stem>.svg` next to the table)."""
        return {}
# --8<-- [end:scenario]


SCENARIOS: dict[str, Scenario] = {}


def register(cls: type[Scenario]) -> type[Scenario]:
    """Class decorator: add one instance of `cls` to the registry, in import order."""
    if cls.name in SCENARIOS:
        raise ValueError(f"two scenarios are named {cls.name!r}")
    SCENARIOS[cls.name] = cls()
    return cls
