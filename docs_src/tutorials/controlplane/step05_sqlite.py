"""Control plane, step 5: keep every version in SQLite, and require a token to change one."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import math
import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple

from aiohttp import web

from reference.proxy_config import ProxyConfigError, parse_proxy_config


class Stored(NamedTuple):
    """One version of a service's config."""

    version: int
    config: dict[str, Any]


DB = web.AppKey("db", sqlite3.Connection)
TOKEN = web.AppKey("token", str)
CHANGED = web.AppKey("changed", asyncio.Condition)

SCHEMA = """
CREATE TABLE IF NOT EXISTS config_versions (
    service     TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    config_json TEXT    NOT NULL,
    PRIMARY KEY (service, version)
)"""

# A cap on how long one GET is held, so a client cannot park requests here for hours.
MAX_WAIT = 60.0


def error(status: type[web.HTTPException], reason: str, **kwargs: Any) -> web.HTTPException:
    """An HTTP error whose JSON body says why."""
    return status(text=json.dumps({"error": reason}), content_type="application/json", **kwargs)


def authorize(request: web.Request) -> None:
    """Raise 401 unless the request carries `Authorization: Bearer <the token>`."""
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    # compare_digest takes as long wherever the first wrong byte is: no timing to guess from.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode(), request.app[TOKEN].encode()
    ):
        raise error(web.HTTPUnauthorized, "bearer token required",
                    headers={"WWW-Authenticate": "Bearer"})


def latest(db: sqlite3.Connection, service: str) -> Stored | None:
    """The newest stored version of `service`, or None."""
    row = db.execute(
        "SELECT version, config_json FROM config_versions WHERE service = ?"
        " ORDER BY version DESC LIMIT 1",
        (service,),
    ).fetchone()
    return None if row is None else Stored(row[0], json.loads(row[1]))


async def put_config(request: web.Request) -> web.Response:
    """Validate the body and store it as the service's next version: 1, 2, 3..."""
    authorize(request)  # before reading the body: strangers get nothing stored, or parsed
    service = request.match_info["name"]
    try:
        config = await request.json()
        # The same parser the sidecars use: what the control plane accepts, they can serve.
        parse_proxy_config(config)
    except ProxyConfigError as problem:
        raise error(web.HTTPBadRequest, problem.reason) from None
    except ValueError as problem:  # not JSON, or not UTF-8
        raise error(web.HTTPBadRequest, f"body is not JSON: {problem}") from None
    db = request.app[DB]
    with db:  # one transaction: both statements or neither
        (version,) = db.execute(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM config_versions WHERE service = ?",
            (service,),
        ).fetchone()
        db.execute("INSERT INTO config_versions VALUES (?, ?, ?)",
                   (service, version, json.dumps(config)))
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
    db, changed = request.app[DB], request.app[CHANGED]
    wait = wait_seconds(request)

    def news() -> bool:
        stored = latest(db, service)
        return stored is not None and not seen(stored, request)

    if wait > 0:
        with contextlib.suppress(TimeoutError):  # the wait ran out: answer with what there is
            async with asyncio.timeout(wait), changed:
                await changed.wait_for(news)  # (2)!
    stored = latest(db, service)
    if stored is None:
        raise error(web.HTTPNotFound, f"service {service!r} has no config")
    if seen(stored, request):
        response = web.Response(status=304)  # no body: the client keeps what it has
    else:
        response = web.json_response({"version": stored.version, "config": stored.config})
    response.etag = str(stored.version)  # (1)!
    return response


def database(path: str) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: open the SQLite file at `path` (creating the table) and close it at exit."""

    async def connection(app: web.Application) -> AsyncIterator[None]:
        db = sqlite3.connect(path)
        db.execute(SCHEMA)
        app[DB] = db
        yield
        db.close()

    return connection


def create_app(db_path: str = "tutorial.db", token: str | None = None) -> web.Application:
    """The control plane's HTTP API over a SQLite file; PUT needs the bearer token."""
    token = token or os.environ.get("SIDECARLAB_TOKEN")
    if not token:
        raise ValueError("set SIDECARLAB_TOKEN: without a token anyone could change every config")
    app = web.Application()
    app[TOKEN] = token
    app.cleanup_ctx.append(database(db_path))
    app[CHANGED] = asyncio.Condition()
    app.router.add_put("/v1/services/{name}/config", put_config)
    app.router.add_get("/v1/services/{name}/config", get_config)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="127.0.0.1", port=7070)
