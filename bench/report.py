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
        f"Python {machine.get('python')}, nginx {machine.get('nginx') or '?'}, wrk {machine.get('wrk') or '?'}",
        f"commit {machine.get('commit') or '?'}",
        str(machine.get("date")),
    ]
    mode = "quick run (`make bench QUICK=1`)" if quick else "full run (`make bench`)"
    return f"*Measured on {'; '.join(parts)}; {mode}.*"


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


def write_results(results: dict[str, Any], out: Path) -> list[Path]:
    """Write results.json and render every scenario in it; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return [path, *render(results, out)]


def render(results: dict[str, Any], out: Path) -> list[Path]:
    """Markdown and SVG for each scenario in `results` that measured something."""
    written = []
    line = caption(results["machine"], results["quick"])
    for name, result in results["scenarios"].items():
        scenario = SCENARIOS.get(name)
        if scenario is None or "error" in result:
            continue
        path = out / f"{name}.md"
        path.write_text(markdown_table(scenario.table(result), line))
        written.append(path)
        for stem, svg in scenario.charts(result).items():
            chart = out / f"{stem}.svg"
            chart.write_text(svg)
            written.append(chart)
    return written
