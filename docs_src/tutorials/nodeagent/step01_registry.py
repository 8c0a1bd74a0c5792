"""Node agent, step 1: a registry of the node's apps, served on a Unix domain socket."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from reference.controlplane.names import check_service_name

SOCKET = "/tmp/sidecarlab/tutorial-agent.sock"


@dataclass(eq=False)
class LocalApp:
    """One app instance on this node, and the service it belongs to."""

    app_id: str
    service: str

    def view(self) -> dict[str, Any]:
        return {"app_id": self.app_id, "service": self.service}


APPS = web.AppKey("apps", dict[str, LocalApp])


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


async def register(request: web.Request) -> web.Response:
    """Add an app to the registry; 409 if its id is taken."""
    local = await read_local_app(request)
    apps = request.app[APPS]
    if local.app_id in apps:
        raise error(web.HTTPConflict, f"app {local.app_id!r} is registered already")
    apps[local.app_id] = local
    return web.json_response(local.view(), status=201)


async def deregister(request: web.Request) -> web.Response:
    """Remove an app from the registry; 404 if it is not there."""
    local = request.app[APPS].pop(request.match_info["app_id"], None)
    if local is None:
        raise error(web.HTTPNotFound, "no such app")
    return web.Response(status=204)


async def list_apps(request: web.Request) -> web.Response:
    """Every registered app."""
    return web.json_response({"apps": [local.view() for local in request.app[APPS].values()]})


def create_app() -> web.Application:
    """The agent's local API: register, list and deregister the node's apps."""
    app = web.Application()
    app[APPS] = {}
    app.router.add_post("/v1/apps", register)
    app.router.add_get("/v1/apps", list_apps)
    app.router.add_delete("/v1/apps/{app_id}", deregister)
    return app


if __name__ == "__main__":
    # A Unix socket, not a port: only processes on this node that may open the file can call.
    os.makedirs(os.path.dirname(SOCKET), mode=0o700, exist_ok=True)
    web.run_app(create_app(), path=SOCKET)
