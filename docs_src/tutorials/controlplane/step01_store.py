"""Control plane, step 1: a versioned config store over HTTP, in memory."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from aiohttp import web


class Stored(NamedTuple):
    """One version of a service's config."""

    version: int
    config: dict[str, Any]


CONFIGS = web.AppKey("configs", dict[str, Stored])


def error(status: type[web.HTTPException], reason: str) -> web.HTTPException:
    """An HTTP error whose JSON body says why."""
    return status(text=json.dumps({"error": reason}), content_type="application/json")


async def put_config(request: web.Request) -> web.Response:
    """Store the body as the service's next version: 1, 2, 3..."""
    service = request.match_info["name"]
    config = await request.json()
    configs = request.app[CONFIGS]
    version = configs[service].version + 1 if service in configs else 1
    configs[service] = Stored(version, config)
    return web.json_response({"service": service, "version": version})


async def get_config(request: web.Request) -> web.Response:
    """The newest version of the service's config."""
    service = request.match_info["name"]
    stored = request.app[CONFIGS].get(service)
    if stored is None:
        raise error(web.HTTPNotFound, f"service {service!r} has no config")
    return web.json_response({"version": stored.version, "config": stored.config})


def create_app() -> web.Application:
    """The control plane's HTTP API; the newest version of each service lives in a dict."""
    app = web.Application()
    app[CONFIGS] = {}
    app.router.add_put("/v1/services/{name}/config", put_config)
    app.router.add_get("/v1/services/{name}/config", get_config)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="127.0.0.1", port=7070)
