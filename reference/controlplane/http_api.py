"""The control plane's HTTP API: put, read, long-poll and roll back configs; see nodes."""

from __future__ import annotations

import asyncio
import hmac
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NoReturn

from aiohttp import ETag, web

from reference.controlplane.hub import ConfigHub, HubClosed, RejectedConfig
from reference.controlplane.names import check_service_name
from reference.controlplane.registry import NodeRegistry
from reference.controlplane.store import StoredConfig, UnknownService, UnknownVersion
from reference.drain import DrainController

__all__ = ["HUB", "REGISTRY", "SETTINGS", "ApiSettings", "create_app"]


@dataclass(frozen=True)
class ApiSettings:
    """Limits and the token of one HTTP API."""

    token: str  # required by PUT and POST; reads are open, like a sidecar's config poll
    max_config_bytes: int = 1_048_576
    # 60 s: long enough to make polling cheap, short enough for the 60 s idle timeout many
    # load balancers apply (clients such as ConfigSync ask for 30 s anyway).
    max_wait: float = 60.0
    max_versions: int = 1000  # the most one GET .../versions may list


HUB = web.AppKey("hub", ConfigHub)
REGISTRY = web.AppKey("registry", NodeRegistry)
SETTINGS = web.AppKey("settings", ApiSettings)


def create_app(
    hub: ConfigHub,
    registry: NodeRegistry,
    settings: ApiSettings,
    *,
    drain: DrainController | None = None,
) -> web.Application:
    """The HTTP API over `hub` and `registry`, with /healthz and /readyz from `drain`."""
    if not settings.token:
        raise ValueError("an empty token would let anyone change every config")
    # aiohttp refuses larger bodies on its own; 1 KiB on top covers a rollback's small body.
    app = web.Application(client_max_size=settings.max_config_bytes + 1024)
    app[HUB] = hub
    app[REGISTRY] = registry
    app[SETTINGS] = settings
    (drain if drain is not None else DrainController(delay=0, grace=0)).install(app)
    app.router.add_get("/v1/services", list_services)
    app.router.add_put("/v1/services/{name}/config", put_config)
    app.router.add_get("/v1/services/{name}/config", get_config)
    app.router.add_get("/v1/services/{name}/versions", list_versions)
    app.router.add_post("/v1/services/{name}/rollback", rollback)
    app.router.add_get("/v1/services/{name}/status", service_status)
    app.router.add_get("/v1/nodes", list_nodes)
    return app


# -- errors, auth and parameters --------------------------------------------------------------


def fail(error: type[web.HTTPException], reason: str, **headers: str) -> NoReturn:
    """Raise `error` with the JSON body `{"error": reason}` every API error has."""
    raise error(
        text=json.dumps({"error": reason}), content_type="application/json", headers=headers
    )


def authorize(request: web.Request) -> None:
    """Raise 401 unless the request carries `Authorization: Bearer <the token>`."""
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        fail(web.HTTPUnauthorized, "bearer token required", **{"WWW-Authenticate": "Bearer"})
    expected = request.app[SETTINGS].token
    # Constant time: an ordinary == returns sooner the earlier the first wrong byte is, and
    # that timing difference lets an attacker guess the token byte by byte. Bytes, because
    # compare_digest refuses non-ASCII str.
    if not hmac.compare_digest(presented.strip().encode(), expected.encode()):
        fail(
            web.HTTPUnauthorized, "invalid token",
            **{"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


def service_name(request: web.Request) -> str:
    """The `{name}` of the path, or 400 if it is not a DNS label."""
    try:
        return check_service_name(request.match_info["name"])
    except ValueError as error:
        fail(web.HTTPBadRequest, str(error))


def number_param(request: web.Request, name: str, default: float, *, minimum: float) -> float:
    """A finite query number of at least `minimum`, or 400."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < minimum:
        fail(web.HTTPBadRequest, f"?{name} must be a number >= {minimum:g}, got {raw[:40]!r}")
    return value


async def read_body(request: web.Request) -> bytes:
    """The request body, or 413 when it is over the config size limit."""
    limit = request.app[SETTINGS].max_config_bytes
    # Content-Length lets us refuse before reading a byte; a chunked body is counted as it
    # arrives by aiohttp's client_max_size instead.
    size = request.content_length
    if size is None or size <= limit:
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body = None
        if body is not None and len(body) <= limit:
            return body
    raise web.HTTPRequestEntityTooLarge(
        limit, size or limit + 1,
        text=json.dumps({"error": f"body over the {limit} byte limit"}),
        content_type="application/json",
    )


def timestamp(unix: float) -> str:
    """Unix time as ISO 8601 in UTC, to the millisecond."""
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="milliseconds")


# -- configs ----------------------------------------------------------------------------------


async def put_config(request: web.Request) -> web.Response:
    """Store the body as the service's next config version, if it is a valid proxy config."""
    authorize(request)  # before reading the body: strangers must not make us read a megabyte
    service = service_name(request)
    body = await read_body(request)
    try:
        stored = await request.app[HUB].put(service, body)
    except RejectedConfig as error:
        fail(web.HTTPBadRequest, str(error))
    return web.json_response({"service": service, "version": stored.version})


async def get_config(request: web.Request) -> web.StreamResponse:
    """The newest config, with ETag; 304 for If-None-Match; `?wait=S` long-polls for a new one."""
    service = service_name(request)
    settings = request.app[SETTINGS]
    wait = min(number_param(request, "wait", 0.0, minimum=0.0), settings.max_wait)
    known = request.if_none_match
    try:
        stored = await newest_unseen(request.app[HUB], service, known, wait)
    except HubClosed:
        # 503, not 304: a client backs off after an error (with jitter, ConfigSync does)
        # instead of asking this shutting-down process again at once.
        fail(web.HTTPServiceUnavailable, "control plane shutting down", **{"Retry-After": "1"})
    if stored is None:
        fail(web.HTTPNotFound, f"service {service!r} has no config")
    etag = str(stored.version)
    if seen(stored, known):
        response = web.Response(status=304)
    else:
        # Spliced, not re-encoded: the stored text is already compact JSON, and a sidecar
        # fleet polling a large config should not cost a parse and a dump per request. The
        # name needs no escaping: it is a DNS label.
        head = f'{{"service":"{service}","version":{stored.version},"config":'
        response = web.Response(
            text=f"{head}{stored.config_json}}}", content_type="application/json"
        )
    response.etag = etag
    return response


def seen(stored: StoredConfig | None, known: tuple[ETag, ...] | None) -> bool:
    """True when If-None-Match already names the stored version (or `*` and one exists)."""
    if stored is None or not known:
        return False
    # Weak comparison, as RFC 9110 asks for If-None-Match: W/"7" and "7" both mean version 7.
    return any(tag.value in (str(stored.version), "*") for tag in known)


async def newest_unseen(
    hub: ConfigHub, service: str, known: tuple[ETag, ...] | None, wait: float
) -> StoredConfig | None:
    """The newest version, after waiting up to `wait` s for one the client has not seen.

    A service without any config waits for its first version: a sidecar that starts before
    its config exists gets it the moment it is stored, rather than a 404 and a backoff.
    """
    if wait <= 0:
        return await hub.latest(service)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    # Subscribe before reading: a version stored between the read and the subscription
    # would otherwise go unnoticed until the wait ran out.
    with hub.subscribe([service]) as subscription:
        stored = await hub.latest(service)
        while stored is None or seen(stored, known):
            remaining = deadline - loop.time()
            if remaining <= 0 or not await subscription.changed(remaining):
                break  # the wait ran out: the caller answers 304 (or 404)
            stored = await hub.latest(service)
    return stored


async def list_versions(request: web.Request) -> web.Response:
    """The service's versions, newest first; `?limit=N` (default 100)."""
    service = service_name(request)
    settings = request.app[SETTINGS]
    limit = number_param(request, "limit", 100, minimum=1)
    if limit != int(limit) or limit > settings.max_versions:
        fail(web.HTTPBadRequest, f"?limit must be a whole number from 1 to {settings.max_versions}")
    try:
        versions = await request.app[HUB].versions(service, limit=int(limit))
    except UnknownService:
        fail(web.HTTPNotFound, f"service {service!r} has no config")
    return web.json_response({
        "service": service,
        "latest": versions[0].version,
        "versions": [
            {
                "version": info.version,
                "created_at": timestamp(info.created_at),
                "rollback_of": info.rollback_of,
            }
            for info in versions
        ],
    })


async def rollback(request: web.Request) -> web.Response:
    """Store a copy of an earlier version as the newest: `{"version": N}`."""
    authorize(request)
    service = service_name(request)
    try:
        document = json.loads(await read_body(request))
        version = document["version"]
    except (ValueError, TypeError, KeyError):
        version = None
    # bool is an int subclass, and `true` is nobody's version number.
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        fail(web.HTTPBadRequest, 'body must be {"version": N} with N a positive integer')
    try:
        stored = await request.app[HUB].rollback(service, version)
    except UnknownService:
        fail(web.HTTPNotFound, f"service {service!r} has no config")
    except UnknownVersion:
        fail(web.HTTPNotFound, f"service {service!r} has no version {version}")
    except RejectedConfig as error:
        # The request is fine; the old config fails today's rules.
        fail(web.HTTPConflict, f"version {version} is no longer a valid config: {error}")
    return web.json_response(
        {"service": service, "version": stored.version, "rollback_of": version}
    )


async def list_services(request: web.Request) -> web.Response:
    """Every service with a config, and its newest version."""
    services = await request.app[HUB].services()
    return web.json_response({
        "services": [{"service": name, "version": version} for name, version in services.items()]
    })


# -- nodes ------------------------------------------------------------------------------------


async def service_status(request: web.Request) -> web.Response:
    """What each node last reported on the service: ACK or NACK, which version, and why."""
    service = service_name(request)
    hub, registry = request.app[HUB], request.app[REGISTRY]
    latest = await hub.latest(service)
    if latest is None:
        fail(web.HTTPNotFound, f"service {service!r} has no config")
    nodes = []
    for ack in await hub.acks(service):
        health = registry.health(ack.node_id)
        nodes.append({
            "node_id": ack.node_id,
            # "unknown": the node reported before this process started and has not beaten since.
            "health": health.value if health is not None else "unknown",
            "state": "ACK" if ack.accepted else "NACK",
            "version": ack.version,
            "nonce": ack.nonce,
            "error_detail": ack.error_detail,
            "applied_version": ack.applied_version,
            "in_sync": ack.applied_version == latest.version,
            "updated_at": timestamp(ack.updated_at),
        })
    return web.json_response({"service": service, "version": latest.version, "nodes": nodes})


async def list_nodes(request: web.Request) -> web.Response:
    """Every node agent that heartbeats in, with its health."""
    registry = request.app[REGISTRY]
    return web.json_response({
        "suspect_after_seconds": registry.suspect_after,
        "dead_after_seconds": registry.dead_after,
        "nodes": [
            {
                "node_id": node.node_id,
                "hostname": node.hostname,
                "health": node.health.value,
                "last_heartbeat_age_seconds": round(node.last_heartbeat_age, 3),
                "facts": dict(node.facts),
                "applied_versions": dict(node.applied_versions),
            }
            for node in registry.nodes()
        ],
    })
