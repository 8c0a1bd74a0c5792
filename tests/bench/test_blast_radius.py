"""The blast-radius scenario on a tiny run: who failed, how much, and when each app recovered.

Timings are not checked (a shared 2-core machine makes restarts slow or fast); only that the
kill hit the apps it must hit and no others, every failure is counted once, recovery was
measured, and the table and chart were written.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from .conftest import run_tiny

SVG = "{http://www.w3.org/2000/svg}"
# Smaller than `--quick`: 2 apps per pattern, 60 requests/s each, apps re-registering every
# 0.5 s; the load stops 0.3 s after both patterns serve again (about 6 s in all on a quiet
# machine; the 8 s bound only matters on a busy one).
TINY = {"blast_radius": {"apps": 2, "rate_rps": 60, "before_seconds": 0.4, "max_after_seconds": 8,
                         "tail_seconds": 0.3, "app_refresh_seconds": 0.5}}
PATTERNS = ("sidecars", "nodeagent")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return run_tiny(tmp_path_factory, TINY)


def scenario(lab) -> dict[str, Any]:
    return lab[1]["scenarios"]["blast_radius"]


def test_killing_one_sidecar_fails_only_its_own_app(lab):
    run = scenario(lab)["patterns"]["sidecars"]
    assert run["apps"] == 2 and run["apps_affected"] == 1 and run["share_affected"] == 0.5
    assert run["failed"] > 0
    by_app = run["recovery_by_app_seconds"]
    assert by_app[0] is not None and by_app[1] is None, f"only app 1 lost its helper: {by_app}"


def test_killing_the_node_agent_fails_every_app_on_it(lab):
    run = scenario(lab)["patterns"]["nodeagent"]
    assert run["apps"] == 2 and run["apps_affected"] == 2 and run["share_affected"] == 1.0
    assert run["failed"] >= 2


def test_nothing_failed_before_the_kill_and_every_failure_is_counted_once(lab):
    result = scenario(lab)
    patterns = result["patterns"]
    assert sum(run["requests"] for run in patterns.values()) == result["scheduled"]
    # The load stopped once everything served again (plus a tail), within its upper bound.
    settings = result["settings"]
    assert 0 < result["load_seconds"] <= settings["before_seconds"] + settings["max_after_seconds"]
    for pattern, run in patterns.items():
        assert run["failed_before_fault"] == 0, f"{pattern}: failures before the kill"
        assert 0 < run["failed"] < run["requests"], pattern
        assert sum(run["failure_answers"].values()) == run["failed"], pattern
        assert sum(result["timeline"][pattern]) == run["failed"], f"{pattern}: timeline misses failures"


def test_recovery_is_measured_from_the_kill_and_from_the_restart(lab):
    for pattern, run in scenario(lab)["patterns"].items():
        restart = run["restart"]
        assert restart["stopped_at"] <= restart["exited_at"] <= restart["spawned_at"] < restart["listening_at"]
        assert run["recovery_seconds"] is not None, f"{pattern} did not recover within the tiny run"
        assert run["recovery_seconds"] > 0 and run["restart_to_listening_seconds"] > 0
        # Recovery counts from the kill, the other from the restart, which comes after it.
        assert run["restart_to_recovery_seconds"] <= run["recovery_seconds"]
        recovered = [t for t in run["recovery_by_app_seconds"] if t is not None]
        assert len(recovered) == run["apps_affected"] and max(recovered) == run["recovery_seconds"]


def test_table_and_timeline_chart_are_written_with_units_and_a_legend(lab):
    out, _ = lab
    lines = (out / "blast_radius.md").read_text().splitlines()
    assert lines[0].startswith("| ") and "(s)" in lines[0] and "(%)" in lines[0]
    assert set(lines[1]) <= set("|-: ")
    assert sum(1 for line in lines[2:] if line.startswith("| ")) == len(PATTERNS)
    root = ET.parse(out / "blast_radius_timeline.svg").getroot()  # raises on malformed XML
    labels = {t.get("class"): t.text for t in root.iter(f"{SVG}text") if "axis-label" in (t.get("class") or "")}
    assert "(s)" in (labels.get("axis-label x-label") or "")
    assert "(" in (labels.get("axis-label y-label") or "")
    assert any(g.get("class") == "legend" and list(g.iter(f"{SVG}text")) for g in root.iter(f"{SVG}g"))
