"""Real servers on 127.0.0.1 for the node agent tests: upstreams, the agent, a local client."""

from __future__ import annotations

import asyncio
import inspect
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web

from reference.controlplane.grpc_service import create_server, mark_serving
from reference.controlplane.http_api import ApiSettings, create_app
from reference.controlplane.hub import ConfigHub
from reference.controlplane.registry import NodeRegistry
from reference.controlplane.store import ConfigRepository
from reference.nodeagent.agent import AgentSettings, NodeAgent
from reference.proxy_config import parse_proxy_config
from reference.protos import controlplane_pb2, nodeagent_pb2_grpc

NAME = web.AppKey("name", str)


@dataclass
class Upstream:
    """A test upstream on a free port; a request carrying `X-Fail: 1` gets a 503."""

    name: str
    port: int = 0
    hits: list[str] = field(default_factory=list)  # the paths it served, in order

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def upstream() -> AsyncIterator[Callable[[str], Awaitable[Upstream]]]:
    """Start upstreams: `await upstream("v1")`."""
    runners: list[web.AppRunner] = []

    async def start(name: str) -> Upstream:
        record = Upstream(name)

        async def answer(request: web.Request) -> web.Response:
            record.hits.append(request.path)
            if request.headers.get("X-Fail") == "1":
                return web.Response(status=503, text="failing on purpose\n")
            return web.json_response({"upstream": name, "path": request.path})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        record.port = runner.addresses[0][1]
        runners.append(runner)
        return record

    yield start
    for runner in runners:
        await runner.cleanup()


def config_for(endpoint: str, *, host: str = "reviews", **extra: Any) -> dict[str, Any]:
    """A proxy config that sends every call for `host` to one endpoint (subset v1)."""
    return {
        "routes": {"hosts": [host], "http": [
            {"route": [{"destination": {"host": host, "subset": "v1"}}]}]},
        "clusters": {host: {"v1": [endpoint]}},
        # No retries and a low threshold: each failing call counts once, and the breaker
        # opens after three of them.
        "retries": {"attempts": 0},
        "breaker": {"failure_threshold": 3, "recovery_timeout_seconds": 60},
        **extra,
    }


def free_address() -> str:
    """A loopback address nobody listens on: a control plane that is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def settings_for(tmp_path: Path, **overrides: Any) -> AgentSettings:
    """Settings for an agent in `tmp_path`, with no drain delay and the control plane down."""
    values: dict[str, Any] = {
        "node_id": "node-test",
        "control_plane": free_address(),
        "socket_path": str(tmp_path / "agent.sock"),
        "admin_port": 0,
        "cache_dir": str(tmp_path / "cache"),
        "heartbeat_interval": 0.1,
        "drain_delay": 0.0,
        "drain_grace": 2.0,
    }
    values.update(overrides)
    return AgentSettings(**values)


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[NodeAgent]:
    """A started node agent whose control plane is down; feed it updates through its watch."""
    async with NodeAgent(settings_for(tmp_path)) as running:
        yield running


@pytest.fixture
async def local_api(agent: NodeAgent) -> AsyncIterator[nodeagent_pb2_grpc.NodeAgentStub]:
    """A client of the agent's local API over its Unix socket, as an app would use it."""
    async with grpc.aio.insecure_channel(f"unix:{agent.local_api.socket_path}") as channel:
        yield nodeagent_pb2_grpc.NodeAgentStub(channel)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def feed(
    agent: NodeAgent, service: str, version: int, config: Any
) -> controlplane_pb2.AckRequest:
    """Hand the agent's watch one update, as the control plane's stream would; return the ACK."""
    text = config if isinstance(config, str) else json.dumps(config)
    ack = await agent.watch.handle(controlplane_pb2.ConfigUpdate(
        service=service, version=version, nonce=f"n{version}", config_json=text))
    assert ack is not None, f"the watch ignored the update for {service}: is an app registered?"
    return ack


async def call(http: aiohttp.ClientSession, address: str, path: str = "/reviews/1",
               host: str = "reviews", **headers: str) -> tuple[int, Any]:
    """One outbound call through an app's listener; returns (status, body)."""
    async with http.get(f"http://{address}{path}", headers={"Host": host, **headers}) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def eventually(check: Callable[[], Any], timeout: float = 3.0) -> None:
    """Wait until `check()` (a function or a coroutine function) is truthy; fail after
    `timeout` seconds, a wide bound because CI machines vary."""
    async with asyncio.timeout(timeout):
        while True:
            outcome = check()
            if inspect.isawaitable(outcome):
                outcome = await outcome
            if outcome:
                return
            await asyncio.sleep(0.02)

TOKEN = "node-agent-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class ControlPlane:
    """The real control plane, both APIs in this process, on free loopback ports."""

    hub: ConfigHub
    registry: NodeRegistry
    server: grpc.aio.Server
    runner: web.AppRunner
    grpc_port: int
    http_port: int
    stopped: bool = False

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.hub.close()  # ends the Watch streams with OK, as a control plane shutting down does
        await self.server.stop(0)
        await self.runner.cleanup()


@pytest.fixture
async def control_plane(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[ControlPlane]]]:
    """Start the control plane: `await control_plane()`, or `validate=False` to let bad
    configs through (as an older control plane with laxer rules would) for NACK tests."""
    started: list[ControlPlane] = []
    repository = ConfigRepository(tmp_path / "controlplane.db")

    async def start(*, validate: bool = True, grpc_port: int = 0) -> ControlPlane:
        hub = ConfigHub(repository, validator=parse_proxy_config if validate else None)
        # suspect_after / 3 is the heartbeat interval the nodes are told: 0.1 s here.
        registry = NodeRegistry(suspect_after=0.3, dead_after=10.0)
        server, grpc_port, health = create_server(hub, registry, f"127.0.0.1:{grpc_port}")
        await server.start()
        await mark_serving(health)
        runner = web.AppRunner(create_app(hub, registry, ApiSettings(token=TOKEN)),
                               access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        plane = ControlPlane(hub, registry, server, runner, grpc_port, runner.addresses[0][1])
        started.append(plane)
        return plane

    yield start
    for plane in started:
        await plane.stop()
    repository.close()
