"""The noisy-neighbour scenario on a tiny run: every window measured, counts and CPU consistent.

Timings are not checked (a shared 2-core machine makes them move, and the question is exactly
how much a neighbour moves them); only that every number was measured, the counts add up, the
flood ran where it should and nowhere else, and the table and charts were written.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from .conftest import run_tiny

SVG = "{http://www.w3.org/2000/svg}"
# Smaller than `--quick`: 2 quiet apps, one flood level, 0.3 s windows, no warm-up; wrk's
# shortest run (1 s) sets the flood windows' length (about 5 s in all, most of it starting the
# helpers).
TINY = {"noisy_neighbour": {"quiet_apps": 2, "flood_connections": [8], "repeats": 1,
                            "window_seconds": 0.3, "flood_lead_seconds": 0.2, "warmup_seconds": 0}}
PATTERNS = ("sidecars", "nodeagent")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return run_tiny(tmp_path_factory, TINY)


def scenario(lab) -> dict[str, Any]:
    return lab[1]["scenarios"]["noisy_neighbour"]


def windows(result: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(pattern, "baseline" or the flood's connections, summary) for every measured cell."""
    cells = []
    for pattern in PATTERNS:
        by_flood = result["patterns"][pattern]
        cells.append((pattern, "baseline", by_flood["baseline"]))
        cells += [(pattern, connections, run) for connections, run in by_flood["flood"].items()]
    return cells


def test_both_patterns_are_measured_without_and_with_the_flood(lab):
    result = scenario(lab)
    assert set(result["patterns"]) == set(PATTERNS)
    for pattern in PATTERNS:
        by_flood = result["patterns"][pattern]
        assert list(by_flood["flood"]) == list(by_flood["flood_over_baseline"]) == ["8"]
    assert sorted(result["order"]) == sorted(f"{p}/{c}" for p in PATTERNS for c in (0, 8))


def test_every_quiet_request_was_scheduled_answered_and_none_failed(lab):
    result = scenario(lab)
    settings = result["settings"]
    per_window = round(settings["quiet_apps"] * settings["rate_per_app_rps"] * settings["window_seconds"])
    for pattern, flood, run in windows(result):
        assert run["windows"] == settings["repeats"]
        assert run["requests"] == settings["repeats"] * per_window, run
        assert run["ok"] + run["errors"] == run["requests"]
        # A flood at a few connections slows the quiet apps; it must not make them fail.
        assert run["errors"] == 0, f"{pattern}, {flood}: {run}"


def test_quiet_latency_is_measured_per_app_and_pooled(lab):
    result = scenario(lab)
    for _, _, run in windows(result):
        assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"], run
        assert len(run["p99_ms_per_app"]) == result["settings"]["quiet_apps"]
        assert all(value > 0 for value in run["p99_ms_per_app"])
        assert run["worst_app_p99_ms"] == max(run["p99_ms_per_app"]) <= run["max_ms"]


def test_the_flood_runs_only_in_flood_windows_and_gets_through_without_errors(lab):
    result = scenario(lab)
    for pattern, flood, run in windows(result):
        if flood == "baseline":
            assert run["flood"] is None
            assert run["cpu_vcpu"]["wrk"] == 0, f"{pattern}: wrk used CPU in a window without a flood"
            continue
        assert run["flood"]["connections"] == int(flood)
        assert run["flood"]["requests"] > 0 and run["flood"]["rps"] > 0
        assert run["flood"]["errors"] == 0, run["flood"]
        assert run["cpu_vcpu"]["wrk"] > 0, f"{pattern}: wrk's CPU time was not counted"


def test_cpu_is_recorded_for_every_process_that_shares_the_cores(lab):
    result = scenario(lab)
    for pattern, flood, run in windows(result):
        cpu = run["cpu_vcpu"]
        assert set(cpu) == {"helpers", "wrk", "nginx", "paced_client"}
        assert cpu["helpers"] > 0 and cpu["paced_client"] > 0, (pattern, flood, cpu)
        # The kernel counts CPU time in 10 ms ticks: nginx's share of a tiny baseline window
        # can round to 0, its share of a flood cannot.
        assert cpu["nginx"] > 0 if flood != "baseline" else cpu["nginx"] >= 0, (pattern, flood, cpu)


def test_ratios_divide_the_flood_window_by_the_baseline(lab):
    result = scenario(lab)
    for pattern in PATTERNS:
        by_flood = result["patterns"][pattern]
        ratios = by_flood["flood_over_baseline"]["8"]
        assert ratios["p99"] == round(by_flood["flood"]["8"]["p99_ms"] / by_flood["baseline"]["p99_ms"], 3)
        assert len(ratios["p99_per_repeat"]) == result["settings"]["repeats"]
        assert all(value > 0 for value in ratios["p99_per_repeat"])


def test_table_and_charts_are_written_with_units_and_legends(lab):
    out, _ = lab
    lines = (out / "noisy_neighbour.md").read_text().splitlines()
    assert lines[0].startswith("| ") and "(ms)" in lines[0] and "(req/s)" in lines[0] and "(vCPU)" in lines[0]
    assert set(lines[1]) <= set("|-: ")
    assert sum(1 for line in lines[2:] if line.startswith("| ")) == 4  # 2 patterns: baseline, flood
    for stem in ("noisy_neighbour_p99", "noisy_neighbour_p50", "noisy_neighbour_cpu"):
        root = ET.parse(out / f"{stem}.svg").getroot()  # raises on malformed XML
        labels = {t.get("class"): t.text for t in root.iter(f"{SVG}text") if "axis-label" in (t.get("class") or "")}
        assert labels.get("axis-label x-label"), f"{stem} has no x-axis label"
        assert "(" in (labels.get("axis-label y-label") or ""), f"{stem}: y label without a unit"
        assert any(g.get("class") == "legend" and list(g.iter(f"{SVG}text")) for g in root.iter(f"{SVG}g"))
