"""Control plane, step 4: long-poll with `?wait=S`, answered the moment a new version lands."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from typing import Any, NamedTuple

from aiohttp import web

from reference.proxy_config import ProxyConfigError, parse_proxy_config


class Stored(NamedTuple):
    """One version of a service's config."""

    version: int
    config: dict[str, Any]


CONFIGS = web.AppKey("configs", dict[str, Stored])
CHANGED = web.AppKey("changed", asyncio.Condition)

# A cap on how long one GET is held, so a client cannot park requests here for hours.
MAX_WAIT = 60.0


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
    async with request.app[CHANGED]:
        request.app[CHANGED].notify_all()  # wake every waiting GET; each re-checks its service
    return web.json_response({"service": service, "version": version})


def wait_seconds(request: web.Request) -> float:
    """The `?wait=` query parameter: seconds to hold the request, 0 by default."""
    try:
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        wait = math.nan
    if not math.isfinite(wait) or wait < 0:
        raise error(web.HTTPBadRequest, "?wait must be a number of seconds >= 0")
    return min(wait, MAX_WAIT)


def seen(stored: Stored, request: web.Request) -> bool:
    """True when the request's If-None-Match already names the stored version."""
    # Weak comparison, as RFC 9110 asks for If-None-Match: W/"3" and "3" both mean version 3.
    return any(tag.value in (str(stored.version), "*") for tag in request.if_none_match or ())


async def get_config(request: web.Request) -> web.Response:
    """The newest version, or 304 if the client still has it after waiting up to `?wait=` s."""
    service = request.match_info["name"]
    configs, changed = request.app[CONFIGS], request.app[CHANGED]
    wait = wait_seconds(request)

    def news() -> bool:
        stored = configs.get(service)
        return stored is not None and not seen(stored, request)

    if wait > 0:
        with contextlib.suppress(TimeoutError):  # the wait ran out: answer with what there is
            async with asyncio.timeout(wait), changed:
                await changed.wait_for(news)  # (2)!
    stored = configs.get(service)
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
    app[CHANGED] = asyncio.Condition()
    app.router.add_put("/v1/services/{name}/config", put_config)
    app.router.add_get("/v1/services/{name}/config", get_config)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="127.0.0.1", port=7070)
