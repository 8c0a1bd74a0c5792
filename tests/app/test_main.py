"""`python -m reference.app` as a real process: announce the port, serve, drain, exit 0."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Generous: the first start of an interpreter on a busy CI machine is slow; a healthy run
# takes well under a second.
TIMEOUT = 10


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def start_app() -> Iterator:
    processes: list[subprocess.Popen] = []

    def start(*args: str) -> tuple[subprocess.Popen, dict]:
        process = subprocess.Popen(
            [sys.executable, "-m", "reference.app", "--port", "0", *args],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        processes.append(process)
        line = process.stdout.readline()
        assert line, f"the app exited before listening: {process.stderr.read()}"
        return process, json.loads(line)

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(TIMEOUT)
        process.stdout.close()
        process.stderr.close()


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        return json.load(response)


def test_the_app_announces_its_port_serves_and_drains_on_sigterm(start_app):
    process, listening = start_app("--version", "v2", "--drain-delay", "0.1", "--drain-grace", "2")
    assert listening["event"] == "listening"
    assert listening["component"] == "app"
    assert listening["version"] == "v2"
    body = get_json(f"http://127.0.0.1:{listening['port']}/reviews/3")
    assert body["version"] == "v2"

    process.send_signal(signal.SIGTERM)
    assert process.wait(TIMEOUT) == 0
    assert "drain done" in process.stderr.read()


def test_a_prestop_post_to_the_admin_port_drains_and_exits_0(start_app):
    admin = free_port()
    process, listening = start_app("--admin-port", str(admin), "--drain-delay", "0.1")
    assert listening["admin"] == admin
    request = urllib.request.Request(f"http://127.0.0.1:{admin}/drain", method="POST")
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        assert response.status == 202
    assert process.wait(TIMEOUT) == 0


def test_bad_flags_are_refused_before_anything_listens():
    result = subprocess.run(
        [sys.executable, "-m", "reference.app", "--fail-rate", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert result.returncode == 2
    assert "fail_rate must be between 0 and 1" in result.stderr
