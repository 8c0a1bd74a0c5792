"""`python -m reference demo ...` runs to completion and its summary tells the story."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from bench.procs import ROOT

DURATION = 6
# Start-up (about a second per wave of processes on a small machine), the run itself and the
# shutdown; generous because both demos run side by side on what may be a two-core machine.
DEADLINE = DURATION + 30


@pytest.fixture(scope="module")
def demo_runs() -> dict[str, subprocess.CompletedProcess[str]]:
    """Both demos, run side by side to halve the wait; pattern -> the finished process."""
    processes = {
        pattern: subprocess.Popen(
            [sys.executable, "-m", "reference", "demo", pattern, "--duration", str(DURATION),
             "--no-color"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for pattern in ("sidecar", "nodeagent")
    }
    finished = {}
    for pattern, process in processes.items():
        try:
            out, err = process.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            process.terminate()  # the demo stops its children on SIGTERM
            out, err = process.communicate(timeout=20)
        finished[pattern] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return finished


@pytest.mark.parametrize("pattern", ["sidecar", "nodeagent"])
def test_demo_runs_to_completion_and_shows_the_split_and_a_breaker_trip(
    demo_runs: dict[str, subprocess.CompletedProcess[str]], pattern: str
) -> None:
    run = demo_runs[pattern]
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-3000:]}\n{run.stderr}"
    summary = run.stdout[run.stdout.index("summary:"):]
    totals = re.search(r"all stages\s+v1\s+(\d+)\s+[\d.]+%\s+v2\s+(\d+)", summary)
    assert totals, summary
    assert int(totals[1]) > 0 and int(totals[2]) > 0, summary
    assert re.search(r"breaker\s+reviews/v2 tripped at", summary), summary
    assert "versions 1 -> 2" in summary
    assert "processes exited 0 after SIGTERM" in summary


def test_demo_rejects_a_duration_too_short_for_its_timeline() -> None:
    run = subprocess.run([sys.executable, "-m", "reference", "demo", "sidecar", "--duration", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert "--duration must be at least" in run.stderr
