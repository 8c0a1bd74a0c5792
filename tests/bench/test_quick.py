"""The lab's harness end to end on a tiny subset: the files it writes have the right shape.

Timings are not checked (a shared 2-core machine makes them move); only that every number was
measured, every ratio computed, and every table and chart written and well formed.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from bench.report import render, write_results

from .conftest import run_tiny

SVG = "{http://www.w3.org/2000/svg}"
# Smaller than `--quick`: 1 s wrk runs without warm-up, N = 1 and 2, 1 s windows (about 25 s).
TINY = {
    "data_path": {"seconds": 1, "repeats": 1, "warmup_seconds": 0, "idle_seconds": 0.5},
    "resource_cost": {"counts": [1, 2], "window_seconds": 1, "warmup_seconds": 0},
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    return run_tiny(tmp_path_factory, TINY)


def test_results_json_records_the_machine_and_every_scenario(lab):
    out, _ = lab
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"machine", "quick", "scenarios"}
    assert results["quick"] is True
    for key in ("cpu", "cores", "python", "aiohttp", "date", "nginx", "wrk"):
        assert results["machine"][key], f"machine.{key} is empty"
    assert set(results["scenarios"]) == {"data_path", "resource_cost"}
    for name, entry in results["scenarios"].items():
        assert "error" not in entry, f"{name} failed: {entry.get('traceback')}"
        assert entry["settings"] and entry["elapsed_seconds"] > 0


def test_every_path_was_measured_with_positive_numbers_and_no_errors(lab):
    _, results = lab
    paths = results["scenarios"]["data_path"]["paths"]
    assert set(paths) == {"direct", "nginx", "sidecar", "sidecar_slow_lane", "sidecar_uvloop",
                          "nodeagent"}
    for path, by_conn in paths.items():
        assert set(by_conn) == {"1", "16"}
        for conns, run in by_conn.items():
            assert run["requests"] > 0 and run["rps"] > 0, f"{path} at {conns} connections: {run}"
            assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["p999_ms"] <= run["max_ms"]
            assert run["errors"] == 0, f"{path} at {conns} connections had errors: {run}"


def test_idle_memory_is_read_for_each_helper_and_the_default_sidecar_takes_less_than_on_uvloop(lab):
    _, results = lab
    idle = results["scenarios"]["data_path"]["rss_mb_idle"]
    assert set(idle) == {"sidecar", "sidecar_uvloop", "nodeagent", "nginx"}
    assert all(value > 0 for value in idle.values()), idle
    # uvloop loads libuv and OpenSSL; the default sidecar, on asyncio's loop, needs neither.
    assert idle["sidecar"] < idle["sidecar_uvloop"]


def test_ratios_compare_every_path_with_nginx_from_the_same_run(lab):
    _, results = lab
    ratios = results["scenarios"]["data_path"]["ratios"]
    for conns in ("1", "16"):
        assert ratios["nginx"][conns]["rps"] == 1.0
        for path in ("direct", "sidecar", "sidecar_slow_lane", "sidecar_uvloop", "nodeagent"):
            assert ratios[path][conns]["rps"] > 0 and ratios[path][conns]["p99"] > 0


def test_resource_cost_measures_n_sidecars_against_one_node_agent(lab):
    _, results = lab
    scenario = results["scenarios"]["resource_cost"]
    sidecars, agent = scenario["patterns"]["sidecars"], scenario["patterns"]["nodeagent"]
    assert [run["apps"] for run in sidecars] == [run["apps"] for run in agent] == [1, 2]
    assert [run["helpers"] for run in sidecars] == [1, 2]  # one sidecar per app
    assert [run["helpers"] for run in agent] == [1, 1]  # one agent for all of them
    for run in sidecars + agent:
        assert run["rps"] > 0 and run["rss_mb_total"] > 0 and run["pss_mb_total"] > 0
        assert run["cpu_seconds"] > 0 and run["vcpu_per_1000_rps"] > 0
        assert run["errors"] == 0, run
    assert scenario["ratios"]["2"]["rss_total"] > 0
    assert scenario["cited"]["source"].startswith("https://istio.io/v1.24/")


def test_each_chart_is_well_formed_svg_with_axis_labels_and_a_legend(lab):
    out, _ = lab
    charts = sorted(out.glob("*.svg"))
    assert [c.name for c in charts] == ["data_path_latency.svg", "data_path_throughput.svg",
                                        "resource_cost_cpu.svg", "resource_cost_memory.svg"]
    for chart in charts:
        root = ET.parse(chart).getroot()  # raises on malformed XML
        assert root.tag == f"{SVG}svg"
        labels = {t.get("class"): t.text for t in root.iter(f"{SVG}text") if "axis-label" in (t.get("class") or "")}
        assert labels.get("axis-label x-label"), f"{chart.name} has no x-axis label"
        # The value axis always carries its unit, e.g. "Latency (ms)".
        assert "(" in (labels.get("axis-label y-label") or ""), f"{chart.name}: y label without a unit: {labels}"
        legends = [g for g in root.iter(f"{SVG}g") if g.get("class") == "legend"]
        assert legends and list(legends[0].iter(f"{SVG}text")), f"{chart.name} has no legend"


def test_each_scenario_has_a_markdown_table_with_units_and_a_machine_caption(lab):
    out, results = lab
    for name in ("data_path", "resource_cost"):
        text = (out / f"{name}.md").read_text()
        lines = text.splitlines()
        assert lines[0].startswith("| ") and ("(ms)" in lines[0] or "(MB)" in lines[0]), lines[0]
        assert set(lines[1]) <= set("|-: "), f"second line is not a table rule: {lines[1]}"
        assert f"*Measured on {results['machine']['cpu']}" in text
        assert results["machine"]["date"] in text


def test_rendering_the_same_results_again_gives_the_same_bytes(lab, tmp_path):
    out, _ = lab
    results = json.loads((out / "results.json").read_text())
    for path in render(results, tmp_path):
        assert path.read_bytes() == (out / path.name).read_bytes(), f"{path.name} differs"


def test_rerunning_one_scenario_keeps_the_others_with_the_machine_they_were_measured_on(lab, tmp_path):
    out, _ = lab
    old = json.loads((out / "results.json").read_text())
    old["machine"]["date"] = "2001-01-01"
    (tmp_path / "results.json").write_text(json.dumps(old))
    rerun = {"machine": {**old["machine"], "date": "2002-02-02"}, "quick": False,
             "scenarios": {"resource_cost": old["scenarios"]["resource_cost"]}}
    write_results(rerun, tmp_path, merge=True)
    merged = json.loads((tmp_path / "results.json").read_text())
    assert list(merged["scenarios"]) == ["data_path", "resource_cost"]
    assert merged["machine"]["date"] == "2002-02-02"
    assert merged["scenarios"]["data_path"]["machine"]["date"] == "2001-01-01"
    assert "2001-01-01" in (tmp_path / "data_path.md").read_text()
    assert "2002-02-02" in (tmp_path / "resource_cost.md").read_text()
