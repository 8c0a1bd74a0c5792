"""Control plane, step 3: an ETag per version, and 304 Not Modified for a client that has it."""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from aiohttp import web

from reference.proxy_config import ProxyConfigError, parse_proxy_config


class Stored(NamedTuple):
    """One version of a service's config."""

    version: int
    config: dict[str, Any]


CONFIGS = web.AppKey("configs", dict[str, Stored])


def error(status: type[web.HTTPException], reason: str) -> web.HTTPException:
    """An HTTP error whose JSON body says why."""
    return status(text=json.dumps({"error": reason}), content_type="application/json")


async def put_config(request: web.Request) -> web.Response:
    """Validate the body and store it as the service's next version: 1, 2, 3..."""
    service = request.match_info["name"]
    try:
        config = await request.json()
        # The same parser the sidecars use: what the control plane accepts, they can serve.
        parse_proxy_config(config)
    except ProxyConfigError as problem:
        raise error(web.HTTPBadRequest, problem.reason) from None
    except ValueError as problem:  # not JSON, or not UTF-8
        raise error(web.HTTPBadRequest, f"body is not JSON: {problem}") from None
    configs = request.app[CONFIGS]
    version = configs[service].version + 1 if service in configs else 1
    configs[service] = Stored(version, config)
    return web.json_response({"service": service, "version": version})


def seen(stored: Stored, request: web.Request) -> bool:
    """True when the request's If-None-Match already names the stored version."""
    # Weak comparison, as RFC 9110 asks for If-None-Match: W/"3" and "3" both mean version 3.
    return any(tag.value in (str(stored.version), "*") for tag in request.if_none_match or ())


async def get_config(request: web.Request) -> web.Response:
    """The newest version of the service's config, or 304 if the client has it already."""
    service = request.match_info["name"]
    stored = request.app[CONFIGS].get(service)
    if stored is None:
        raise error(web.HTTPNotFound, f"service {service!r} has no config")
    if seen(stored, request):
        response = web.Response(status=304)  # no body: the client keeps what it has
    else:
        response = web.json_response({"version": stored.version, "config": stored.config})
    response.etag = str(stored.version)  # (1)!
    return response


def create_app() -> web.Application:
    """The control plane's HTTP API; the newest version of each service lives in a dict."""
    app = web.Application()
    app[CONFIGS] = {}
    app.router.add_put("/v1/services/{name}/config", put_config)
    app.router.add_get("/v1/services/{name}/config", get_config)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="127.0.0.1", port=7070)
