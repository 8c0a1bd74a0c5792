"""An upstream dies or hangs: the sidecar's breaker opens, failures turn fast, then it recovers."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    SIDECAR_SERVICE,
    Mesh,
    Proc,
    app_spec,
    breaker_states,
    get,
    put_config,
    reviews_config,
    start,
    wait_for_version,
    wait_until,
)

PER_TRY_TIMEOUT = 0.3
RECOVERY_TIMEOUT = 0.5  # small, so a recovery fits in a test
FAILURE_THRESHOLD = 3

# "Fast" means the proxy answered without calling the upstream at all: no connect, no wait for
# the per-try timeout. On loopback that takes a millisecond or two; the bound is a third of the
# per-try timeout, wide enough for a loaded CI machine and still clearly not a timed-out call.
FAST = PER_TRY_TIMEOUT / 3


@pytest.fixture
def victim(mesh: Mesh, log_dir: Path) -> Iterator[Proc]:
    """A reviews app the sidecar reaches as the host `victim`, with a quick breaker."""
    (proc,) = start(log_dir, app_spec("victim", "v3"))
    document = reviews_config(
        mesh.upstream_ports, {"v1": 100}, extra_clusters={"victim": proc.ports["port"]},
        breaker={"failure_threshold": FAILURE_THRESHOLD,
                 "recovery_timeout_seconds": RECOVERY_TIMEOUT},
        timeout_seconds=1.0,
        retries={"attempts": 0, "per_try_timeout_seconds": PER_TRY_TIMEOUT},
    )
    reply = put_config(mesh.cp_port, SIDECAR_SERVICE, document)
    assert reply.status == 200, reply.body
    wait_for_version(mesh.sidecar.ports["admin"], SIDECAR_SERVICE, reply.json()["version"])
    assert call_victim(mesh).status == 200
    yield proc
    proc.popen.send_signal(signal.SIGCONT)  # in case a test left it stopped
    proc.kill()


def call_victim(mesh: Mesh):  # type: ignore[no-untyped-def]
    return get(mesh.sidecar.ports["outbound"], "/reviews/1", host="victim")


def wait_for_open_breaker(mesh: Mesh) -> list[float]:
    """Call until the breaker answers; return how long each failure before that took."""
    durations = []
    for _ in range(FAILURE_THRESHOLD * 3):
        reply = call_victim(mesh)
        if reply.headers.get("x-sidecarlab-breaker") == "open":
            assert reply.status == 503
            return durations
        assert reply.status in (502, 503, 504), reply.status
        durations.append(reply.seconds)
    raise AssertionError(f"the breaker did not open after {len(durations)} failures")


def assert_fast_503s(mesh: Mesh) -> None:
    replies = [call_victim(mesh) for _ in range(10)]
    assert {reply.status for reply in replies} == {503}
    assert all(reply.headers["x-sidecarlab-breaker"] == "open" for reply in replies)
    assert max(reply.seconds for reply in replies) < FAST, [r.seconds for r in replies]
    assert breaker_states(mesh.sidecar.ports["admin"])[("outbound", "victim")] in ("open",
                                                                                  "half_open")


def wait_for_recovery(mesh: Mesh) -> None:
    # Recovery needs the recovery timeout to pass and one trial call to succeed.
    wait_until(lambda: call_victim(mesh).status == 200, timeout=RECOVERY_TIMEOUT + 5,
               what="the breaker to close after the upstream came back", interval=0.05)
    assert breaker_states(mesh.sidecar.ports["admin"])[("outbound", "victim")] == "closed"


def test_killed_upstream_opens_the_breaker_then_recovers_when_it_returns(
    mesh: Mesh, victim: Proc, log_dir: Path
) -> None:
    port = victim.ports["port"]
    victim.kill()  # SIGKILL: no drain, connections refused from now on

    wait_for_open_breaker(mesh)
    assert_fast_503s(mesh)

    (restarted,) = start(log_dir, app_spec("victim-restarted", "v3", port=port))
    try:
        wait_for_recovery(mesh)
        assert call_victim(mesh).json()["version"] == "v3"
    finally:
        assert restarted.stop() == 0


def test_hung_upstream_costs_timeouts_until_the_breaker_opens(mesh: Mesh, victim: Proc) -> None:
    # SIGSTOP: the kernel still accepts connections, but nothing answers; the worst kind.
    victim.popen.send_signal(signal.SIGSTOP)
    try:
        slow = wait_for_open_breaker(mesh)
        # Each failure before the trip waited for the per-try timeout (bounded by it from
        # below; the upper bound is loose because a busy machine adds scheduling delay).
        assert len(slow) >= FAILURE_THRESHOLD - 1
        assert all(PER_TRY_TIMEOUT * 0.9 <= s < PER_TRY_TIMEOUT + 2 for s in slow), slow
        assert_fast_503s(mesh)
    finally:
        victim.popen.send_signal(signal.SIGCONT)
    time.sleep(RECOVERY_TIMEOUT)
    wait_for_recovery(mesh)
