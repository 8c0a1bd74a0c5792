"""Node agent, step 5: cache each service's last good config on disk, to start offline."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from docs_src.tutorials.sidecar import step04_breaker as sidecar
from reference.config_sync import ConfigStore, ConfigSync, Snapshot
from reference.controlplane.names import check_service_name
from reference.nodeagent.cache import ServiceCache
from reference.proxy_config import parse_proxy_config

SOCKET = "/tmp/sidecarlab/tutorial-agent.sock"


@dataclass(eq=False)
class LocalApp:
    """One app instance on this node, and the service it belongs to."""

    app_id: str
    service: str
    runner: web.AppRunner | None = None  # its outbound listener, once open

    def view(self) -> dict[str, Any]:
        port = self.runner.addresses[0][1] if self.runner is not None else None
        address = None if port is None else f"127.0.0.1:{port}"
        return {"app_id": self.app_id, "service": self.service, "outbound_address": address}


APPS = web.AppKey("apps", dict[str, LocalApp])


class Feeds:
    """One ConfigSync per service, started by its first app, feeding all of them."""

    def __init__(self, session: aiohttp.ClientSession, control_plane: str, wait: float,
                 cache: ServiceCache) -> None:
        self.session, self.control_plane, self.wait = session, control_plane, wait
        self.cache = cache
        self.stores: dict[str, ConfigStore] = {}
        self.syncs: list[ConfigSync] = []

    async def store(self, service: str, apps: dict[str, LocalApp]) -> ConfigStore:
        """The store of `service`, following the control plane from the first call on."""
        store = self.stores.get(service)
        if store is None:
            # Stored before the first await, so a second app of the service finds it.
            store = self.stores[service] = ConfigStore(validator=parse_proxy_config)
            store.subscribe(lambda snapshot: fan_out(apps, service, snapshot))
            sync = ConfigSync(self.session, self.control_plane, service, store, wait=self.wait,
                              cache_path=self.cache.path_for(service))  # (1)!
            self.syncs.append(sync)
            await sync.start()  # loads the cached version, if any, before it returns
        return store


def fan_out(apps: dict[str, LocalApp], service: str, snapshot: Snapshot) -> None:
    """Load a new version into the Router of every app of `service`."""
    for local in list(apps.values()):
        if local.service == service and local.runner is not None:
            local.runner.app[sidecar.ROUTER].load(snapshot.config)


FEEDS = web.AppKey("feeds", Feeds)


def error(status: type[web.HTTPException], reason: str) -> web.HTTPException:
    """An HTTP error whose JSON body says why."""
    return status(text=json.dumps({"error": reason}), content_type="application/json")


async def read_local_app(request: web.Request) -> LocalApp:
    """The body `{"app_id": ..., "service": ...}` as a LocalApp, or 400."""
    try:
        body = await request.json()
        app_id, service = body["app_id"], body["service"]
        if not isinstance(app_id, str) or not 0 < len(app_id) <= 253:
            raise ValueError("app_id must be a string of 1-253 characters")
        # A DNS label: the name ends up in URLs, Host fields and, in step 5, file names.
        return LocalApp(app_id, check_service_name(service))
    except (ValueError, TypeError, KeyError) as problem:
        raise error(web.HTTPBadRequest, f"bad registration: {problem}") from None


async def open_listener(proxy: web.Application) -> web.AppRunner:
    """Serve `proxy` on a free port of 127.0.0.1 and return its runner."""
    runner = web.AppRunner(proxy)
    await runner.setup()
    try:
        # Loopback only, and a port per app: the port says which app is calling (step 3).
        await web.TCPSite(runner, "127.0.0.1", 0).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def register(request: web.Request) -> web.Response:
    """Add an app to the registry and open its outbound listener; 409 if its id is taken."""
    local = await read_local_app(request)
    apps = request.app[APPS]
    if local.app_id in apps:
        raise error(web.HTTPConflict, f"app {local.app_id!r} is registered already")
    apps[local.app_id] = local  # claimed before the first await: a twin request gets 409
    try:
        # A Router (route table + breakers) per app, even for two apps of one service: one
        # app's failing calls must not open the breaker on its neighbours' calls.
        local.runner = await open_listener(sidecar.create_app())  # 503 until it has a config
        store = await request.app[FEEDS].store(local.service, apps)
        if store.current is not None:  # a service other apps already follow: catch up now
            local.runner.app[sidecar.ROUTER].load(store.current.config)
    except BaseException:
        del apps[local.app_id]
        raise
    return web.json_response(local.view(), status=201)


async def deregister(request: web.Request) -> web.Response:
    """Remove an app from the registry and close its listener; 404 if it is not there."""
    local = request.app[APPS].pop(request.match_info["app_id"], None)
    if local is None:
        raise error(web.HTTPNotFound, "no such app")
    if local.runner is not None:
        await local.runner.cleanup()
    return web.Response(status=204)


async def list_apps(request: web.Request) -> web.Response:
    """Every registered app."""
    return web.json_response({"apps": [local.view() for local in request.app[APPS].values()]})


async def close_listeners(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: at shutdown, close every app's listener."""
    yield
    for local in app[APPS].values():
        if local.runner is not None:
            await local.runner.cleanup()


def follow(
    control_plane: str, wait: float, cache_dir: str
) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: the feeds' session while the agent runs; stop every feed at shutdown."""

    async def feeds(app: web.Application) -> AsyncIterator[None]:
        # Owner-only: a config can name every endpoint of a service.
        Path(cache_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        async with aiohttp.ClientSession() as session:
            app[FEEDS] = Feeds(session, control_plane, wait, ServiceCache(cache_dir))
            yield
            for sync in app[FEEDS].syncs:
                await sync.stop()

    return feeds


def create_app(
    control_plane: str = "http://127.0.0.1:7070",
    wait: float = 30.0,
    cache_dir: str = "/tmp/sidecarlab/tutorial-cache",
) -> web.Application:
    """The agent's local API; configs come from `control_plane`, or from `cache_dir` first."""
    app = web.Application()
    app[APPS] = {}
    app.cleanup_ctx.append(follow(control_plane, wait, cache_dir))
    app.cleanup_ctx.append(close_listeners)
    app.router.add_post("/v1/apps", register)
    app.router.add_get("/v1/apps", list_apps)
    app.router.add_delete("/v1/apps/{app_id}", deregister)
    return app


if __name__ == "__main__":
    # A Unix socket, not a port: only processes on this node that may open the file can call.
    os.makedirs(os.path.dirname(SOCKET), mode=0o700, exist_ok=True)
    control_plane = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:7070"
    web.run_app(create_app(control_plane), path=SOCKET)
