"""Run registered scenarios one after another and collect what they measured."""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, TextIO

from . import scenarios as _scenarios  # noqa: F401  (importing it registers every scenario)
from .procs import machine
from .progress import Progress
from .report import write_results
from .scenario import SCENARIOS


def run(names: list[str] | None = None, *, quick: bool = False, out: Path | None = None,
        overrides: dict[str, dict[str, Any]] | None = None, stream: TextIO | None = None) -> dict[str, Any]:
    """Run `names` (default: all, in registry order); write the files to `out` if given.

    `overrides` replaces settings per scenario, e.g. `{"resource_cost": {"counts": [1, 2]}}`,
    for a smoke test smaller than the quick run.
    """
    unknown = sorted(set(names or []) - set(SCENARIOS))
    if unknown:
        raise KeyError(f"no scenario named {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
    results: dict[str, Any] = {"machine": machine(), "quick": quick, "scenarios": {}}
    for name in names or list(SCENARIOS):
        scenario = SCENARIOS[name]
        settings = scenario.settings(quick) | (overrides or {}).get(name, {})
        progress = Progress(name, scenario.steps(settings), stream)
        start = time.monotonic()
        entry: dict[str, Any] = {"title": scenario.title, "settings": settings}
        try:
            entry |= scenario.run(settings, progress)
        except Exception as error:  # one broken scenario must not lose the others' numbers
            entry["error"] = f"{type(error).__name__}: {error}"
            entry["traceback"] = traceback.format_exc()
        entry["elapsed_seconds"] = round(time.monotonic() - start, 1)
        progress.close(failed="error" in entry)
        results["scenarios"][name] = entry
    if out is not None:
        # A subset leaves the other scenarios' committed numbers in place.
        write_results(results, out, merge=names is not None)
    return results
