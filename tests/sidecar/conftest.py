"""Real servers on 127.0.0.1 for the sidecar tests: upstreams, a control plane, the sidecar."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from reference.drain import DrainController
from reference.sidecar.app import Ports, Sidecar, SidecarOptions, serve


NAME = web.AppKey("name", str)


@dataclass
class Seen:
    """One request as an upstream received it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Upstream:
    """A test upstream: its address, what it received, and how to stop it."""

    name: str
    port: int
    seen: list[Seen] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def echo(request: web.Request) -> web.Response:
    """The default upstream: answers with its own name and the request it saw."""
    return web.json_response({"upstream": request.app[NAME], "path": request.path_qs})


@pytest.fixture
async def upstream() -> AsyncIterator[Callable[..., Awaitable[Upstream]]]:
    """Start upstreams on free ports: `await upstream("v1")` or with a custom handler."""
    started: list[Upstream] = []

    async def start(name: str, handler: Handler = echo, port: int = 0) -> Upstream:
        record = Upstream(name, 0)

        @web.middleware
        async def remember(request: web.Request, handler: Handler) -> web.StreamResponse:
            # Read the body only for handlers that do not stream it themselves.
            body = b"" if request.path.startswith("/stream") else await request.read()
            record.seen.append(Seen(request.method, request.path_qs,
                                    [(k, v) for k, v in request.headers.items()], body))
            return await handler(request)

        app = web.Application(middlewares=[remember], client_max_size=64 * 1024 * 1024)
        app[NAME] = name
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        record.port = runner.addresses[0][1]
        record.runner = runner
        started.append(record)
        return record

    yield start
    for record in started:
        await record.stop()


class ControlPlane:
    """A stand-in for the control plane's GET long-poll API, holding one config per service."""

    def __init__(self) -> None:
        self.configs: dict[str, tuple[int, dict[str, Any]]] = {}
        self.changed = asyncio.Event()
        self.url = ""
        self.waits: list[float] = []  # the ?wait of every GET, in arrival order

    def publish(self, service: str, config: dict[str, Any]) -> int:
        version = self.configs.get(service, (0, {}))[0] + 1
        self.configs[service] = (version, config)
        self.changed.set()
        self.changed = asyncio.Event()
        return version

    async def get_config(self, request: web.Request) -> web.StreamResponse:
        service = request.match_info["service"]
        wait = float(request.query.get("wait", "0"))
        self.waits.append(wait)
        known = request.headers.get("If-None-Match")
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            current = self.configs.get(service)
            if current is not None and known != f'"{current[0]}"':
                version, config = current
                return web.json_response({"version": version, "config": config},
                                         headers={"ETag": f'"{version}"'})
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return web.Response(status=304) if current is not None else web.Response(
                    status=404, text="no such service")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)


@pytest.fixture
async def control_plane() -> AsyncIterator[ControlPlane]:
    plane = ControlPlane()
    app = web.Application()
    app.router.add_get("/v1/services/{service}/config", plane.get_config)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    plane.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield plane
    await runner.cleanup()


@dataclass
class RunningSidecar:
    """A sidecar served in this process, with a client and its bound ports."""

    sidecar: Sidecar
    ports: Ports
    session: aiohttp.ClientSession

    @property
    def inbound(self) -> str:
        return f"http://127.0.0.1:{self.ports.inbound}"

    @property
    def outbound(self) -> str:
        return f"http://127.0.0.1:{self.ports.outbound}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.ports.admin}"

    async def wait_for_version(self, version: int, timeout: float = 3.0) -> None:
        async with asyncio.timeout(timeout):
            while self.sidecar.store.version != version:
                await asyncio.sleep(0.01)


@pytest.fixture
async def start_sidecar(control_plane: ControlPlane) -> AsyncIterator[Callable[..., Awaitable[RunningSidecar]]]:
    """Start a sidecar in this process on free ports: `await start_sidecar(app_address=...)`."""
    tasks: list[tuple[asyncio.Task[Any], Sidecar]] = []
    session = aiohttp.ClientSession()

    async def start(app_address: str = "127.0.0.1:9", service: str = "productpage",
                    cache_path: str | None = None, poll_interval: float = 0.0,
                    fast_lane: bool = True, **hosts: Any) -> RunningSidecar:
        options = SidecarOptions(service=service, app_address=app_address,
                                 control_plane=control_plane.url, cache_path=cache_path, wait=2.0,
                                 poll_interval=poll_interval, fast_lane=fast_lane)
        sidecar = Sidecar(options, drain=DrainController(delay=0.0, grace=1.0))
        ready: asyncio.Future[Ports] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(serve(
            sidecar, inbound_host=hosts.get("inbound_host", "127.0.0.1"), inbound_port=0,
            outbound_port=0, admin_port=0, signals=(), on_started=ready.set_result,
        ))
        tasks.append((task, sidecar))
        done, _ = await asyncio.wait([ready, task], timeout=5, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # re-raises the start-up error
        return RunningSidecar(sidecar, await ready, session)

    yield start
    for task, sidecar in tasks:
        sidecar.drain.start_drain()
    for task, _ in tasks:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
    await session.close()


@pytest.fixture
def proxied(upstream, control_plane, start_sidecar):
    """`await proxied(handler, **config)`: upstream v1 and a local app, both answering with
    `handler`, and a sidecar whose config sends every call to reviews to v1."""

    async def start(handler: Handler = echo, **extra: Any) -> tuple[RunningSidecar, Upstream, Upstream]:
        v1 = await upstream("v1", handler)
        app = await upstream("app", handler)
        sidecar = await start_sidecar(app_address=app.address)
        await sidecar.wait_for_version(
            control_plane.publish("productpage", single_config(v1.address, **extra))
        )
        return sidecar, v1, app

    return start


def weighted_config(split: dict[str, int], endpoints: dict[str, list[str]],
                    **extra: Any) -> dict[str, Any]:
    """A config that splits `reviews` between subsets by weight."""
    return {
        "routes": {"hosts": ["reviews"], "http": [{
            "name": "split",
            "route": [{"destination": {"host": "reviews", "subset": subset}, "weight": weight}
                      for subset, weight in split.items()],
        }]},
        "clusters": {"reviews": endpoints},
        **extra,
    }


def single_config(endpoint: str, **extra: Any) -> dict[str, Any]:
    """A config that sends every call to reviews to one endpoint (subset v1)."""
    return {
        "routes": {"hosts": ["reviews"], "http": [
            {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]},
        "clusters": {"reviews": {"v1": [endpoint]}},
        **extra,
    }


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
