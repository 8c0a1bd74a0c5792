"""The node-agent pattern end to end: one agent, ten apps, each with breakers of its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from reference.protos import nodeagent_pb2 as pb
from reference.protos import nodeagent_pb2_grpc
from tests.e2e.conftest import (
    Mesh,
    Proc,
    app_spec,
    breaker_states,
    get,
    put_config,
    request,
    reviews_config,
    start,
    versions_seen,
    wait_until,
)

SERVICE = "e2e-fleet"
APPS = [f"fleet-{n}" for n in range(10)]
BROKEN = "fleet-3"


@pytest.fixture(scope="module")
def flaky(log_dir: Path) -> Iterator[Proc]:
    """An upstream whose failure rate the test switches through POST /admin/fail."""
    (proc,) = start(log_dir, app_spec("flaky", "v2"))
    yield proc
    assert proc.stop() == 0


def set_fail_rate(upstream: Proc, rate: float) -> None:
    reply = request(upstream.ports["port"], "POST", "/admin/fail",
                    body=json.dumps({"fail_rate": rate}).encode(),
                    headers={"Content-Type": "application/json"})
    assert reply.status == 200, reply.body


@pytest.fixture(scope="module")
def fleet(mesh: Mesh, flaky: Proc) -> Iterator[dict[str, int]]:
    """Ten apps registered over the Unix socket; app_id -> its outbound port."""
    document = reviews_config(
        mesh.upstream_ports, {"v1": 100}, extra_clusters={"flaky": flaky.ports["port"]},
        # A long recovery timeout keeps the broken app's breaker open for the whole test.
        breaker={"failure_threshold": 3, "recovery_timeout_seconds": 60.0},
        retries={"attempts": 0},
    )
    reply = put_config(mesh.cp_port, SERVICE, document)
    assert reply.status == 200, reply.body
    version = reply.json()["version"]
    with grpc.insecure_channel(f"unix:{mesh.agent_socket}") as channel:
        stub = nodeagent_pb2_grpc.NodeAgentStub(channel)
        ports = {}

        def register(app_ids: list[str]) -> None:
            for app_id in app_ids:
                answer = stub.Register(pb.RegisterRequest(app_id=app_id, service=SERVICE),
                                       timeout=5)
                ports[app_id] = int(answer.outbound_address.rsplit(":", 1)[1])
            wait_until(lambda: all(app.config_version >= version
                                   for app in stub.ListApps(pb.ListAppsRequest(), timeout=5).apps
                                   if app.app_id in ports),
                       timeout=5, what=f"apps {app_ids} on config version {version}")

        # The first app makes the agent watch the service; the others register once its config
        # is there. Registering while the first config arrives can leave an app without it
        # (reported to the node agent's owner: AppRegistry.register awaits between reading
        # group.config and joining group.apps, so fan_out can miss it).
        register(APPS[:1])
        register(APPS[1:])
        yield ports
        for app_id in APPS:
            stub.Deregister(pb.DeregisterRequest(app_id=app_id), timeout=5)


def test_agent_serves_ten_apps_each_on_its_own_loopback_listener(
    mesh: Mesh, fleet: dict[str, int]
) -> None:
    assert len(set(fleet.values())) == len(APPS)
    for app_id, port in fleet.items():
        assert versions_seen(port, 3) == {"v1": 3}, app_id


def test_a_broken_upstream_opens_only_the_breaker_of_the_app_that_called_it(
    mesh: Mesh, fleet: dict[str, int], flaky: Proc
) -> None:
    set_fail_rate(flaky, 1.0)
    try:
        broken = [get(fleet[BROKEN], "/reviews/1", host="flaky") for _ in range(5)]
    finally:
        set_fail_rate(flaky, 0.0)

    assert [reply.status for reply in broken] == [503] * 5
    assert broken[-1].headers.get("x-sidecarlab-breaker") == "open"
    # The upstream is healthy again: every other app reaches it, the broken app's breaker
    # still refuses (its recovery timeout is a minute), and nothing leaked between apps.
    for app_id, port in fleet.items():
        reply = get(port, "/reviews/1", host="flaky")
        if app_id == BROKEN:
            assert reply.status == 503 and reply.headers["x-sidecarlab-breaker"] == "open"
        else:
            assert reply.status == 200 and reply.json()["version"] == "v2", app_id
    states = breaker_states(mesh.agent.ports["admin"])
    flaky_states = {proxy: state for (proxy, upstream), state in states.items()
                    if upstream == "flaky" and proxy in fleet}
    assert flaky_states == {app_id: "open" if app_id == BROKEN else "closed" for app_id in APPS}


def test_a_real_app_registers_and_its_calls_reach_the_upstream(mesh: Mesh, log_dir: Path) -> None:
    reply = put_config(mesh.cp_port, "reviews", reviews_config(mesh.upstream_ports, {"v3": 100}))
    assert reply.status == 200
    # The sample app registers as the service `reviews` (reference/app/__main__.py).
    (app,) = start(log_dir, app_spec("registered-app", "v1", "--node-agent",
                                     str(mesh.agent_socket), "--app-id", "e2e-real-app"))
    try:
        port = int(app.ports["outbound"].rsplit(":", 1)[1])
        wait_until(lambda: get(port, "/reviews/1", host="reviews").status == 200, timeout=5,
                   what="the agent to serve the reviews config to the app's listener")
        assert versions_seen(port, 5) == {"v3": 5}
    finally:
        assert app.stop() == 0
    # Deregistered on the way out: its listener is closed.
    with pytest.raises(ConnectionRefusedError):
        get(port, "/reviews/1", host="reviews")
