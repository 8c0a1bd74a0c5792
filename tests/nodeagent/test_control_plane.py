"""Against the real control plane: one Watch for the node, ACK/NACK, heartbeats, outages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from reference.nodeagent.agent import NodeAgent
from reference.nodeagent.registry import LocalApp
from tests.nodeagent.conftest import (
    AUTH,
    ControlPlane,
    Upstream,
    call,
    config_for,
    eventually,
    settings_for,
)


async def put(http: aiohttp.ClientSession, plane: ControlPlane, service: str,
              config: dict[str, Any]) -> int:
    async with http.put(f"{plane.url}/v1/services/{service}/config", json=config,
                        headers=AUTH) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["version"]


async def get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as response:
        return await response.json()


async def report(http: aiohttp.ClientSession, plane: ControlPlane, service: str) -> dict[str, Any]:
    """What the control plane's /status shows for this node on `service` ({} before a report)."""
    nodes = (await get(http, f"{plane.url}/v1/services/{service}/status"))["nodes"]
    return next((node for node in nodes if node["node_id"] == "node-test"), {})


async def serving(http: aiohttp.ClientSession, plane: ControlPlane, agent: NodeAgent,
                  endpoint: str, app_id: str = "productpage-1") -> LocalApp:
    """Register an app of productpage, PUT a config for it, wait until the app serves it."""
    app = await agent.registry.register(app_id, "productpage")
    version = await put(http, plane, "productpage", config_for(endpoint))
    await eventually(lambda: app.config_version == version)
    return app


@dataclass
class Stack:
    """The control plane, one upstream, and an agent connected to the control plane."""

    plane: ControlPlane
    reviews: Upstream
    agent: NodeAgent


@pytest.fixture
async def stack(tmp_path: Path, control_plane, upstream) -> AsyncIterator[Stack]:
    plane = await control_plane()
    reviews = await upstream("reviews-v1")
    async with NodeAgent(settings_for(tmp_path, control_plane=plane.grpc_address)) as agent:
        yield Stack(plane, reviews, agent)


def versions(agent: NodeAgent) -> dict[str, int]:
    return {app.app_id: app.config_version for app in agent.registry.apps()}


async def test_a_config_put_over_http_reaches_every_app_of_the_service(stack: Stack, http):
    plane, reviews, agent = stack.plane, stack.reviews, stack.agent
    for i in range(3):
        await agent.registry.register(f"productpage-{i}", "productpage")
    await agent.registry.register("ratings-1", "ratings")

    version = await put(http, plane, "productpage", config_for(reviews.address))

    await eventually(lambda: versions(agent) == {
        "productpage-0": version, "productpage-1": version, "productpage-2": version,
        "ratings-1": 0,
    })
    for app in agent.registry.apps()[:3]:
        assert (await call(http, app.address))[0] == 200
    await eventually(lambda: _acked(http, plane, "productpage", version))


async def _acked(
    http: aiohttp.ClientSession, plane: ControlPlane, service: str, version: int
) -> bool:
    node = await report(http, plane, service)
    return node.get("state") == "ACK" and node.get("version") == version and node["in_sync"]


async def test_an_invalid_update_is_nacked_and_the_nack_shows_on_the_control_plane(
    tmp_path: Path, control_plane, upstream, http
):
    # A control plane that stores what it is given, as an older one with laxer rules would.
    plane = await control_plane(validate=False)
    reviews = await upstream("reviews-v1")
    async with NodeAgent(settings_for(tmp_path, control_plane=plane.grpc_address)) as agent:
        app = await serving(http, plane, agent, reviews.address)
        good = app.config_version

        bad = await put(http, plane, "productpage", {"routes": {"hosts": ["reviews"]}})

        async def nacked() -> bool:
            node = await report(http, plane, "productpage")
            return node.get("state") == "NACK" and node.get("version") == bad

        await eventually(nacked)
        node = await report(http, plane, "productpage")
        assert node["error_detail"].startswith("clusters"), node["error_detail"]
        assert node["applied_version"] == good and node["in_sync"] is False
        assert app.config_version == good
        assert (await call(http, app.address))[0] == 200, "the last good config keeps serving"


async def test_heartbeats_bring_the_node_facts_to_the_control_plane(
    tmp_path: Path, control_plane, upstream, http
):
    plane = await control_plane()
    reviews = await upstream("reviews-v1")
    async with NodeAgent(settings_for(tmp_path, control_plane=plane.grpc_address,
                                      heartbeat_interval=5.0)) as agent:
        await agent.registry.register("productpage-1", "productpage")
        await agent.registry.register("productpage-2", "productpage")
        version = await put(http, plane, "productpage", config_for(reviews.address))

        async def reported() -> bool:
            nodes = (await get(http, f"{plane.url}/v1/nodes"))["nodes"]
            return bool(nodes) and nodes[0]["applied_versions"] == {"productpage": version} \
                and nodes[0]["facts"].get("apps") == "2"

        # Only reachable in time if the agent beats at the control plane's 0.1 s, not at 5 s.
        await eventually(reported)
        node = (await get(http, f"{plane.url}/v1/nodes"))["nodes"][0]
        assert node["node_id"] == "node-test" and node["health"] == "healthy"
        for fact in ("hostname", "platform", "python_version", "cpu_count", "load_average",
                     "pid", "agent_version"):
            assert fact in node["facts"], f"fact {fact} missing"
        assert agent.heartbeat.interval == 0.1


async def test_apps_keep_serving_when_the_control_plane_goes_away(stack: Stack, http):
    plane, reviews, agent = stack.plane, stack.reviews, stack.agent
    app = await serving(http, plane, agent, reviews.address)

    await plane.stop()

    await eventually(lambda: not agent.watch.connected and agent.watch.last_error is not None)
    status, body = await call(http, app.address)
    assert status == 200 and body["upstream"] == "reviews-v1"
    assert app.config_version == 1


async def test_a_new_service_reopens_the_watch_without_resending_what_the_node_has(
    stack: Stack, http
):
    plane, reviews, agent = stack.plane, stack.reviews, stack.agent
    page = await agent.registry.register("productpage-1", "productpage")
    first = await put(http, plane, "productpage", config_for(reviews.address))
    await eventually(lambda: _acked(http, plane, "productpage", first))
    nonce = (await report(http, plane, "productpage"))["nonce"]

    ratings = await agent.registry.register("ratings-1", "ratings")
    second = await put(http, plane, "ratings", config_for(reviews.address))

    await eventually(lambda: ratings.config_version == second)
    assert agent.watch.services == {"productpage", "ratings"}
    assert page.config_version == first
    # A re-sent version would carry a fresh nonce, and its ACK would replace this one.
    assert (await report(http, plane, "productpage"))["nonce"] == nonce


async def test_the_watch_reconnects_and_catches_up_when_the_control_plane_is_back(
    stack: Stack, control_plane, http
):
    plane, reviews, agent = stack.plane, stack.reviews, stack.agent
    app = await serving(http, plane, agent, reviews.address)
    await plane.stop()
    await eventually(lambda: agent.watch.last_error is not None)

    back = await control_plane(grpc_port=plane.grpc_port)  # same port, same database
    newer = await put(http, back, "productpage", config_for(reviews.address, timeout_seconds=1.5))

    # Wide bound: the agent's backoff and gRPC's own reconnect backoff both add jitter.
    await eventually(lambda: app.config_version == newer, timeout=8.0)
    await eventually(lambda: _acked(http, back, "productpage", newer))


async def test_a_service_that_comes_back_catches_up_on_versions_sent_while_it_was_gone(
    stack: Stack, http
):
    plane, reviews, agent = stack.plane, stack.reviews, stack.agent
    await agent.registry.register("ratings-1", "ratings")  # keeps the stream open
    await serving(http, plane, agent, reviews.address)
    await agent.registry.deregister("productpage-1")

    missed = await put(http, plane, "productpage", config_for(reviews.address, timeout_seconds=1.5))
    back = await agent.registry.register("productpage-1", "productpage")

    await eventually(lambda: back.config_version == missed)
