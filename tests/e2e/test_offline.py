"""With the control plane down, proxies keep serving the last good config, even after a restart."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from reference.protos import nodeagent_pb2 as pb
from reference.protos import nodeagent_pb2_grpc
from tests.e2e.conftest import (
    QUICK_DRAIN,
    TOKEN,
    Mesh,
    Proc,
    agent_spec,
    config_version,
    control_plane_spec,
    put_config,
    reviews_config,
    sidecar_spec,
    start,
    stop_all,
    versions_seen,
    wait_for_version,
    wait_until,
)

SERVICE = "e2e-offline"


@dataclass
class Offline:
    """A control plane of this module's own (the test stops it), a sidecar and a node agent."""

    work: Path
    log_dir: Path
    control_plane: Proc
    sidecar: Proc
    agent: Proc


def register(socket_path: Path, app_id: str) -> int:
    """Register `app_id` for SERVICE with the agent; return its outbound listener's port."""
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stub = nodeagent_pb2_grpc.NodeAgentStub(channel)
        reply = stub.Register(pb.RegisterRequest(app_id=app_id, service=SERVICE), timeout=5)
    return int(reply.outbound_address.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def offline(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory, log_dir: Path
            ) -> Iterator[Offline]:
    work = tmp_path_factory.mktemp("offline")
    (control_plane,) = start(log_dir, control_plane_spec(work / "cp.db"),
                             env={"SIDECARLAB_TOKEN": TOKEN})
    # Everything goes to v3, which no default would pick: serving v3 proves the config came
    # from the control plane, and later from the cache.
    reply = put_config(control_plane.ports["http"], SERVICE,
                       reviews_config(mesh.upstream_ports, {"v3": 100}))
    assert reply.status == 200
    sidecar, agent = start(
        log_dir,
        sidecar_spec("offline-sidecar", SERVICE, mesh.local_app.ports["port"],
                     f"http://127.0.0.1:{control_plane.ports['http']}",
                     "--cache", str(work / "sidecar-cache.json"), *QUICK_DRAIN),
        agent_spec("offline-agent", work / "agent.sock", control_plane.ports["grpc"],
                   "--cache-dir", str(work / "agent-cache")),
    )
    state = Offline(work, log_dir, control_plane, sidecar, agent)
    yield state
    codes = stop_all(state.sidecar, state.agent, state.control_plane)
    assert codes == {name: 0 for name in codes}, codes


def test_proxies_keep_serving_the_last_good_config_while_the_control_plane_is_down(
    offline: Offline,
) -> None:
    app_port = register(offline.work / "agent.sock", "offline-app")
    wait_for_version(offline.sidecar.ports["admin"], SERVICE, 1)
    wait_for_version(offline.agent.ports["admin"], SERVICE, 1)
    assert versions_seen(offline.sidecar.ports["outbound"], 5) == {"v3": 5}
    assert versions_seen(app_port, 5) == {"v3": 5}

    assert offline.control_plane.stop() == 0

    # The proxies notice (the long poll and the Watch stream break) and keep what they have.
    for _ in range(3):
        assert versions_seen(offline.sidecar.ports["outbound"], 10) == {"v3": 10}
        assert versions_seen(app_port, 10) == {"v3": 10}
    assert config_version(offline.sidecar.ports["admin"], SERVICE) == 1
    assert config_version(offline.agent.ports["admin"], SERVICE) == 1


def test_proxies_restarted_while_the_control_plane_is_down_serve_from_their_cache(
    offline: Offline, mesh: Mesh
) -> None:
    assert offline.control_plane.popen.poll() is not None, "runs after the outage test"
    cp_url = f"http://127.0.0.1:{offline.control_plane.ports['http']}"
    cp_grpc = offline.control_plane.ports["grpc"]
    assert stop_all(offline.sidecar, offline.agent) == {"offline-sidecar": 0, "offline-agent": 0}

    offline.sidecar, offline.agent = start(
        offline.log_dir,
        sidecar_spec("offline-sidecar-2", SERVICE, mesh.local_app.ports["port"], cp_url,
                     "--cache", str(offline.work / "sidecar-cache.json"), *QUICK_DRAIN),
        agent_spec("offline-agent-2", offline.work / "agent.sock", cp_grpc,
                   "--cache-dir", str(offline.work / "agent-cache")),
    )
    app_port = register(offline.work / "agent.sock", "offline-app")

    # No control plane to ask: version 1 and its v3 route can only come from the disk cache.
    wait_until(lambda: config_version(offline.sidecar.ports["admin"], SERVICE) == 1, timeout=5,
               what="the restarted sidecar to load its cache")
    assert versions_seen(offline.sidecar.ports["outbound"], 5) == {"v3": 5}
    assert versions_seen(app_port, 5) == {"v3": 5}
    assert config_version(offline.agent.ports["admin"], SERVICE) == 1
