"""The rolling-restart scenario on a tiny run: failures without a drain, none with it.

Timings are not checked (a shared 2-core machine makes restarts slow or fast); only that every
instance was replaced in order, the stop without a drain failed requests and the drained one
did not, the node agent's upgrade reached every app on it, and the table and chart were written.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from .conftest import run_tiny

SVG = "{http://www.w3.org/2000/svg}"
# Smaller than `--quick`: 2 instances per roll, 2 apps on the node agent, 60 requests/s per
# variant, apps re-registering every 0.5 s; the drain delay still leaves the endpoint change
# time to arrive (about 6 s in all, a third of it starting 7 processes).
TINY = {"rolling_restart": {"instances": 2, "node_apps": 2, "rate_rps": 60, "endpoint_lag_seconds": 0.2,
                            "drain_delay_seconds": 0.8, "drain_grace_seconds": 1.5,
                            "app_refresh_seconds": 0.5, "before_seconds": 0.3, "max_after_seconds": 8,
                            "tail_seconds": 0.3}}
VARIANTS = ("nodrain", "drain", "nodeagent", "control")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return run_tiny(tmp_path_factory, TINY)


def scenario(lab) -> dict[str, Any]:
    return lab[1]["scenarios"]["rolling_restart"]


def test_each_roll_replaces_every_instance_in_turn_after_the_endpoint_lag(lab):
    result = scenario(lab)
    lag = result["settings"]["endpoint_lag_seconds"]
    for roll in ("nodrain", "drain"):
        steps = result["variants"][roll]["steps"]
        assert len(steps) == result["variants"][roll]["restarts"] == 2
        for step in steps:
            assert step["removed_at"] >= step["sigterm_at"] + lag
            assert step["sigterm_at"] < step["old_exited_at"] <= step["done_at"]
            assert step["added_at"] <= step["done_at"]
        assert steps[1]["sigterm_at"] >= steps[0]["done_at"], f"{roll}: two instances stopped at once"


def test_stopping_without_a_drain_fails_requests_sent_during_the_lag(lab):
    run = scenario(lab)["variants"]["nodrain"]
    assert run["failed"] > 0, "the balancer still sent to a stopped instance: some requests must fail"


def test_the_drained_roll_fails_no_request(lab):
    run = scenario(lab)["variants"]["drain"]
    assert run["failed"] == 0, f"the drain outlasts the endpoint lag, yet: {run['failure_answers']}"


def test_the_control_that_nothing_restarts_fails_no_request(lab):
    run = scenario(lab)["variants"]["control"]
    assert run["requests"] > 0 and run["failed"] == 0, f"the machine stalled: {run['failure_answers']}"


def test_upgrading_the_node_agent_reaches_every_app_on_it(lab):
    run = scenario(lab)["variants"]["nodeagent"]
    assert run["apps"] == 2 and run["apps_affected"] == 2 and run["failed"] >= 2
    assert run["recovery_seconds"] is not None, "the load stops only once every app serves again"
    restart = run["restart"]
    assert restart["stopped_at"] < restart["exited_at"] <= restart["spawned_at"] < restart["listening_at"]


def test_every_request_is_counted_once_and_none_failed_before_the_first_sigterm(lab):
    result = scenario(lab)
    variants = result["variants"]
    assert sum(run["requests"] for run in variants.values()) == result["scheduled"]
    # The load stopped once everything served again (plus a tail), within its upper bound.
    settings = result["settings"]
    assert 0 < result["load_seconds"] <= settings["before_seconds"] + settings["max_after_seconds"]
    for variant, run in variants.items():
        assert run["failed_before_fault"] == 0, variant
        assert sum(run["failure_answers"].values()) == run["failed"] <= run["requests"], variant
        assert sum(result["timeline"][variant]) == run["failed"], f"{variant}: timeline misses failures"


def test_table_and_timeline_chart_are_written_with_units_and_a_legend(lab):
    out, _ = lab
    lines = (out / "rolling_restart.md").read_text().splitlines()
    assert lines[0].startswith("| ") and "(%)" in lines[0] and "(s)" in lines[0]
    assert set(lines[1]) <= set("|-: ")
    assert sum(1 for line in lines[2:] if line.startswith("| ")) == len(VARIANTS)
    root = ET.parse(out / "rolling_restart_timeline.svg").getroot()  # raises on malformed XML
    labels = {t.get("class"): t.text for t in root.iter(f"{SVG}text") if "axis-label" in (t.get("class") or "")}
    assert "(s)" in (labels.get("axis-label x-label") or "")
    assert "(" in (labels.get("axis-label y-label") or "")
    assert any(g.get("class") == "legend" and list(g.iter(f"{SVG}text")) for g in root.iter(f"{SVG}g"))
