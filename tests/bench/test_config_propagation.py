"""The config-propagation scenario on a tiny run: every write seen applied by every consumer.

Timings are not checked (a shared 2-core machine makes them move); only that each mode measured
every (write, app) pair, that no apply is dated before its write, that the admin listeners agree
with the logs, and that the table and charts were written.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from .conftest import run_tiny

SVG = "{http://www.w3.org/2000/svg}"
MODES = ("longpoll", "poll", "nodeagent")
# Smaller than `--quick`: one app per mode, two writes each, a 0.3 s polling interval (about
# 5 s in all, most of it starting and stopping the helpers).
TINY = {"config_propagation": {"counts": [1], "writes": {"push": 2, "poll": 2}, "poll_interval_s": 0.3}}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return run_tiny(tmp_path_factory, TINY)


def runs(lab) -> list[tuple[str, dict[str, Any]]]:
    result = lab[1]["scenarios"]["config_propagation"]
    return [(mode, run) for mode in MODES for run in result["modes"][mode]]


def test_every_mode_saw_every_write_applied_by_every_app(lab):
    assert [(mode, run["apps"]) for mode, run in runs(lab)] == [(mode, 1) for mode in MODES]
    for mode, run in runs(lab):
        assert run["writes"] == 2, (mode, run)
        assert run["samples"] == run["writes"] * run["apps"], (mode, run)
        assert run["missed"] == 0, f"{mode}: some apps never logged a write as applied: {run}"
        assert run["serving_last_version"] == run["apps"], f"{mode}: admin /config disagrees: {run}"


def test_no_apply_is_dated_before_its_write_and_the_percentiles_are_ordered(lab):
    for mode, run in runs(lab):
        per_app, every = run["per_app_ms"], run["all_applied_ms"]
        # A negative delay would mean the log's clock or its parsing is off (a time zone, say).
        assert 0 < per_app["min"] <= per_app["p50"] <= per_app["p99"] <= per_app["max"], (mode, run)
        # The slowest app of each write: its median is never below the median of all apps.
        assert per_app["p50"] <= every["p50"] <= every["max"] == per_app["max"], (mode, run)
        assert run["put_ms_p50"] > 0, (mode, run)


def test_the_table_has_a_row_per_mode_with_units_and_the_interval(lab):
    out, _ = lab
    lines = (out / "config_propagation.md").read_text().splitlines()
    assert "(ms)" in lines[0] and "Poll interval (s)" in lines[0], lines[0]
    rows = [line for line in lines[2:] if line.startswith("| ")]
    assert len(rows) == len(MODES)
    assert any("poll every 0.3 s" in row for row in rows), rows


def test_both_charts_are_well_formed_svg_with_axis_labels_and_a_legend(lab):
    out, _ = lab
    for stem in ("config_propagation_push", "config_propagation_poll"):
        root = ET.parse(out / f"{stem}.svg").getroot()  # raises on malformed XML
        labels = {t.get("class"): t.text for t in root.iter(f"{SVG}text") if "axis-label" in (t.get("class") or "")}
        assert labels.get("axis-label x-label"), f"{stem} has no x-axis label"
        assert "(ms)" in (labels.get("axis-label y-label") or ""), f"{stem}: y label without a unit"
        legends = [g for g in root.iter(f"{SVG}g") if g.get("class") == "legend"]
        assert legends and len(list(legends[0].iter(f"{SVG}text"))) == 4, f"{stem}: legend"
