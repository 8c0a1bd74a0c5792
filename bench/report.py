"""Turn results into files: results.json, one Markdown table and some SVG charts per scenario."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .scenario import SCENARIOS, Table


def caption(machine: dict[str, Any], quick: bool) -> str:
    """The line under every table: which machine, which software, which commit, which day."""
    parts = [
        f"{machine.get('cpu') or 'unknown CPU'}, {machine.get('cores')} cores, {machine.get('memory_gb')} GB",
        f"{machine.get('os')}, Linux {machine.get('kernel')}",
        f"Python {machine.get('python')}{_libraries(machine)}, nginx {machine.get('nginx') or '?'}, "
        f"wrk {machine.get('wrk') or '?'}",
        f"commit {machine.get('commit') or '?'}",
        str(machine.get("date")),
    ]
    mode = "quick run (`make bench QUICK=1`)" if quick else "full run (`make bench`)"
    return f"*Measured on {'; '.join(parts)}; {mode}.*"


def _libraries(machine: dict[str, Any]) -> str:
    """" (aiohttp 3.x, uvloop 0.y)" for the helpers' libraries, if the run recorded them."""
    if "aiohttp" not in machine:
        return ""  # results from before these were recorded
    loop = f"uvloop {machine['uvloop']}" if machine.get("uvloop") else "asyncio's own event loop"
    return f" (aiohttp {machine['aiohttp']}, {loop})"


def markdown_table(table: Table, caption_line: str) -> str:
    """A GitHub/Python-Markdown table, padded so the source reads as a table too."""
    cells = [table.headers, *table.rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.headers))]

    def line(row: list[str]) -> str:
        padded = [cell.rjust(w) if a == "r" else cell.ljust(w) for cell, w, a in zip(row, widths, table.align)]
        return "| " + " | ".join(padded) + " |"

    rule = "| " + " | ".join(("-" * (w - 1) + ":") if a == "r" else "-" * w
                             for w, a in zip(widths, table.align)) + " |"
    out = [line(table.headers), rule, *(line(row) for row in table.rows), ""]
    out += [*(f"{note}\n" for note in table.notes), caption_line, ""]
    return "\n".join(out)


def write_results(results: dict[str, Any], out: Path, *, merge: bool = False) -> list[Path]:
    """Write results.json and render every scenario in it; the paths written.

    With `merge`, scenarios already in OUT/results.json that this run did not measure are kept,
    each with the machine and mode it was measured in (`--only` re-measures one scenario).
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    if merge and path.exists():
        results = merged(json.loads(path.read_text()), results)
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return [path, *render(results, out)]


def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new`'s scenarios, plus `old`'s others, in registry order; each keeps its own machine."""
    kept = {}
    for name, entry in old.get("scenarios", {}).items():
        if name not in new["scenarios"]:
            kept[name] = {"machine": old["machine"], "quick": old["quick"]} | entry
    both = kept | new["scenarios"]
    order = [name for name in SCENARIOS if name in both] + [name for name in both if name not in SCENARIOS]
    return new | {"scenarios": {name: both[name] for name in order}}


def render(results: dict[str, Any], out: Path) -> list[Path]:
    """Markdown and SVG for each scenario in `results` that measured something."""
    written = []
    for name, result in results["scenarios"].items():
        scenario = SCENARIOS.get(name)
        if scenario is None or "error" in result:
            continue
        line = caption(result.get("machine", results["machine"]), result.get("quick", results["quick"]))
        path = out / f"{name}.md"
        path.write_text(markdown_table(scenario.table(result), line))
        written.append(path)
        for stem, svg in scenario.charts(result).items():
            chart = out / f"{stem}.svg"
            chart.write_text(svg)
            written.append(chart)
    return written
