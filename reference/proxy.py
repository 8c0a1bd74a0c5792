"""The forwarding engine of the sidecar and the node agent: route, protect, retry, stream."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from aiohttp import HttpVersion, HttpVersion10, HttpVersion11, web
from aiohttp.streams import EMPTY_PAYLOAD
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from reference.breaker import CircuitBreaker, CircuitOpenError, Permit, State
from reference.hop_by_hop import ALWAYS_HOP_BY_HOP, connection_options
from reference.http_listener import ProxyRequest
from reference.proxy_config import BreakerSettings, ProxyConfig, parse_endpoint
from reference.upstream_pool import (
    RequestBodyError,
    UpstreamError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)
from reference.weighted_router import Destination, NoRouteError, RouteTable

__all__ = [
    "IDEMPOTENT_METHODS",
    "InboundForwarder",
    "OutboundProxy",
    "Upstream",
    "create_upstream_pool",
    "create_upstream_session",
    "forward_to",
    "framing_error",
]

log = logging.getLogger(__name__)

# RFC 9110 section 9.2.2; POST and PATCH are never retried, whatever the upstream answered.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({502, 503, 504})

# Via names this proxy by a pseudonym (RFC 9110 section 7.6.3 allows one instead of a host),
# so a response does not reveal internal host names to whoever receives it.
VIA_NAME = "sidecarlab"

# Besides the hop-by-hop fields, `Expect` ends here: aiohttp answers `100-continue` to the
# client itself, and an upstream must not be asked to do it a second time.
REQUEST_DROPPED = ALWAYS_HOP_BY_HOP | {"expect"}
RESPONSE_DROPPED = ALWAYS_HOP_BY_HOP

# Responses up to this size are read whole and written in one piece: one syscall instead of
# three. Larger or unsized ones stream chunk by chunk.
SMALL_BODY = 64 * 1024


def create_upstream_pool(*, max_idle_per_endpoint: int = 64) -> UpstreamPool:
    """The one connection pool a proxy needs: keep-alive connections per upstream endpoint."""
    # One pool for every upstream, reused across requests: a new TCP connection per request
    # would cost more than the whole rest of the proxy's work. Not an aiohttp ClientSession:
    # its per-request machinery (URL objects, cookie jar, auto headers, timers) cost two thirds
    # of the proxy's CPU time per request; the pool writes the request as given and frames the
    # response with aiohttp's own parser.
    return UpstreamPool(max_idle_per_endpoint=max_idle_per_endpoint, idle_timeout=30.0)


# The name from when the pool was an aiohttp ClientSession; it returns the pool, which is
# closed the same way (`await pool.close()`).
create_upstream_session = create_upstream_pool


def _pool_of(session: object) -> UpstreamPool:
    # Proxies used to take an aiohttp ClientSession; one still passed is not used for upstream
    # traffic, and the proxy gets a pool of its own instead.
    return session if isinstance(session, UpstreamPool) else create_upstream_pool()


# ---------------------------------------------------------------------------------------------
# Message hygiene, shared by the inbound and the outbound side.


def _plain(status: int, text: str, *, close: bool = False, **headers: str) -> web.Response:
    response = web.Response(status=status, text=text, headers=headers or None)
    if close:
        # After a framing error the bytes left on the connection cannot be trusted to start
        # a new request; after a 413 they would have to be read and thrown away first.
        response.force_close()
    return response


# --8<-- [start:framing]
def framing_error(request: web.BaseRequest) -> web.Response | None:
    """Return a 400/501 for a request whose body length is ambiguous (RFC 9112 section 6.3)."""
    headers = request.headers
    has_te = "Transfer-Encoding" in headers
    lengths = headers.getall("Content-Length", ()) if "Content-Length" in headers else ()
    # aiohttp's parser (llhttp, and its pure-Python twin) already refuses TE with CL, repeated
    # Content-Length and TE not ending in chunked. These checks stay so the guarantee does not
    # depend on the parser in use; the two below are the ones it lets through.
    if len(lengths) > 1 or (lengths and "," in lengths[0]):
        return _plain(400, "ambiguous framing: more than one Content-Length\n", close=True)
    if not has_te:
        return None
    if lengths:
        return _plain(400, "ambiguous framing: Transfer-Encoding with Content-Length\n", close=True)
    if request.version < HttpVersion11:
        # RFC 9112 section 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
        return _plain(400, "ambiguous framing: Transfer-Encoding in HTTP/1.0\n", close=True)
    codings = [
        coding.strip().lower()
        for value in headers.getall("Transfer-Encoding")
        for coding in value.split(",")
    ]
    if codings[-1] != "chunked" or codings.count("chunked") != 1:
        return _plain(400, "ambiguous framing: Transfer-Encoding must end in chunked\n", close=True)
    if len(codings) > 1:
        # `gzip, chunked` is well framed, but Transfer-Encoding is hop-by-hop: passing the
        # gzip-coded bytes on without it would hand the upstream a body it cannot decode.
        return _plain(501, f"transfer coding not supported: {', '.join(codings[:-1])}\n",
                      close=True)
    return None
# --8<-- [end:framing]


# --8<-- [start:headers]
# `Connection` values that name no field beyond the always-dropped ones: the common case.
PLAIN_CONNECTION = frozenset({"keep-alive", "close"})


def _end_to_end(headers: CIMultiDictProxy[str], dropped: frozenset[str]) -> CIMultiDict[str]:
    connection = headers.getall("Connection", ())
    if connection and not (len(connection) == 1 and connection[0].lower() in PLAIN_CONNECTION):
        # Fields the sender named in Connection were meant for this hop only (RFC 9110
        # section 7.6.1); forwarding `Connection: X-Foo` + `X-Foo` would smuggle X-Foo on.
        dropped = dropped | connection_options(headers.items())
    # Copy, then remove the few dropped names: a handful of case-insensitive lookups in C,
    # instead of lower-casing every field name in Python. Order and repeats stay as they came.
    kept = CIMultiDict(headers)
    for name in dropped:
        kept.popall(name, None)
    return kept


# Via for the HTTP versions that occur, built once instead of formatted per message.
_VIA = {version: f"{version.major}.{version.minor} {VIA_NAME}"
        for version in (HttpVersion10, HttpVersion11)}


def _via(version: HttpVersion | None) -> str:
    if version is None:
        return VIA_NAME
    return _VIA.get(version) or f"{version.major}.{version.minor} {VIA_NAME}"


def request_headers(request: web.BaseRequest, *, forwarded_for: bool) -> list[tuple[str, str]]:
    """The fields to send upstream: end-to-end ones, plus Via and, if asked, X-Forwarded-For."""
    headers = _end_to_end(request.headers, REQUEST_DROPPED)
    headers.add("Via", _via(request.version))
    if forwarded_for and request.remote:
        # One field line, the client's list plus the peer: many apps read only the first
        # `X-Forwarded-For` line. Only the entries added by proxies you run can be trusted.
        chain = headers.popall("X-Forwarded-For", [])
        headers.add("X-Forwarded-For", ", ".join([*chain, request.remote]))
    return list(headers.items())


def response_headers(response: UpstreamResponse) -> CIMultiDict[str]:
    """The fields to send back downstream: end-to-end ones, plus Via."""
    headers = _end_to_end(response.headers, RESPONSE_DROPPED)
    headers.add("Via", _via(response.version))
    return headers
# --8<-- [end:headers]


# --8<-- [start:raw]
# The fast lane applies the same rules to the fields as they came off the wire: bytes, no
# decoding, no multidict copy, one pass. What one pass cannot settle (a Connection field that
# names other fields) is left to the functions above, on the slow lane.
_REQUEST_DROPPED_RAW = frozenset(name.encode() for name in REQUEST_DROPPED)
_RESPONSE_DROPPED_RAW = frozenset(name.encode() for name in RESPONSE_DROPPED)
_VIA_RAW = {version: f"Via: {via}\r\n".encode() for version, via in _VIA.items()}


def raw_end_to_end(headers: CIMultiDictProxy[str], raw_headers: tuple[tuple[bytes, bytes], ...],
                   dropped: frozenset[bytes], version: HttpVersion) -> bytes | None:
    """End-to-end fields plus Via, as encoded header lines; None where the slow lane must decide.

    `headers` and `raw_headers` are the parser's two views of one message's fields.
    """
    cache = _RAW_FIELDS[dropped]
    # Most messages repeat the fields of one before them (a client's calls, an upstream's
    # answers within a second): the lines they make are looked up instead of made again.
    key = (raw_headers, version)
    fields = cache.get(key)
    if fields is not None:
        return fields  # a Connection field among them was checked when they were cached
    fields = _raw_fields(headers, raw_headers, dropped, version)
    if fields is None:
        return None  # not remembered: rare, and a refusal should not take a place in the cache
    if len(cache) >= RAW_FIELDS_CACHE_SIZE:
        cache.clear()  # a client sending new fields every time gets no cache, not a big one
    cache[key] = fields
    return fields


def _raw_fields(headers: CIMultiDictProxy[str], raw_headers: tuple[tuple[bytes, bytes], ...],
                dropped: frozenset[bytes], version: HttpVersion) -> bytes | None:
    connection = headers.getall("Connection", ())
    if connection and not (len(connection) == 1 and connection[0].lower() in PLAIN_CONNECTION):
        return None  # it names fields to drop as well
    lines = [b"%s: %s\r\n" % field for field in raw_headers if field[0].lower() not in dropped]
    lines.append(_VIA_RAW.get(version) or f"Via: {_via(version)}\r\n".encode())
    fields = b"".join(lines)
    # The parser refuses CR and LF inside fields; checked again, as _request_head does, so the
    # guarantee against injected lines does not rest on the parser alone.
    if fields.count(b"\n") != len(lines) or fields.count(b"\r") != len(lines):
        return None
    return fields


RAW_FIELDS_CACHE_SIZE = 256
_RAW_FIELDS: dict[frozenset[bytes], dict[tuple, bytes]] = {
    _REQUEST_DROPPED_RAW: {}, _RESPONSE_DROPPED_RAW: {}}
# --8<-- [end:raw]


class BodyTooLarge(Exception):
    """The request body grew past max_body_bytes while it was streaming."""


class _RequestBody:
    """Streams the client's body upstream chunk by chunk, counting bytes against the limit."""

    __slots__ = ("client_failed", "content", "limit", "started", "too_large")

    def __init__(self, content: web.StreamReader, limit: int) -> None:
        self.content = content
        self.limit = limit
        self.started = False  # once True, the bytes are gone: the request cannot be replayed
        self.too_large = False
        self.client_failed = False  # the client broke off its upload: not the upstream's fault

    @property
    def failed(self) -> bool:
        """True when the exchange failed because of the client's body, not the upstream."""
        return self.too_large or self.client_failed

    async def chunks(self) -> AsyncIterator[bytes]:
        content, limit, total = self.content, self.limit, 0
        while True:
            try:
                chunk = await content.readany()
            except Exception:
                self.client_failed = True
                raise
            if not chunk:
                return
            self.started = True
            total += len(chunk)
            if total > limit:
                # A chunked body has no length to check up front, so the limit is enforced
                # here, before the byte past it is sent; the exchange then answers 413.
                self.too_large = True
                raise BodyTooLarge(limit)
            yield chunk


def _body_failure(body: _RequestBody, limit: int) -> web.Response:
    if body.too_large:
        return _plain(413, f"request body over {limit} bytes\n", close=True)
    return _plain(400, "request body broken off by the client\n", close=True)


async def relay(request: web.BaseRequest, upstream: UpstreamResponse) -> web.StreamResponse:
    """Send `upstream`'s response to the client, streaming bodies of unknown or large size."""
    headers = response_headers(upstream)
    length = upstream.content_length
    if (length is not None and length <= SMALL_BODY) or request.method == "HEAD":
        try:
            body = await upstream.read()
        except (UpstreamError, asyncio.TimeoutError) as error:
            # Nothing is sent yet, so the client can still get an honest status.
            status = 504 if isinstance(error, asyncio.TimeoutError) else 502
            return _plain(status, f"upstream response broken off: {type(error).__name__}\n")
        # aiohttp keeps the upstream's Content-Length header as it is (also for HEAD).
        return web.Response(status=upstream.status, reason=upstream.reason, headers=headers,
                            body=body)
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                  headers=headers)
    await response.prepare(request)
    # Chunks go out as they arrive: memory stays at one read buffer, and the client sees the
    # first bytes while the upstream is still producing the rest.
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    except ConnectionResetError:
        return response  # the client went away; the caller's release() drops the upstream
    except (UpstreamError, asyncio.TimeoutError) as error:
        # The status line is out; the one honest signal left is to cut the connection, so the
        # client sees an incomplete message instead of a short body that looks complete.
        log.warning("response from %s broken off: %r", upstream.endpoint, error)
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


async def _outcome(result: UpstreamResponse | UpstreamError) -> UpstreamResponse:
    """A try's outcome, known already, as the awaitable _exchange expects of a try."""
    if isinstance(result, UpstreamError):
        raise result
    return result


# ---------------------------------------------------------------------------------------------
# Inbound: everything to the one local app, no routing, no retries.


class InboundForwarder:
    """An aiohttp handler that forwards every request to one local address (the app)."""

    def __init__(
        self,
        session: UpstreamPool | object | None,
        address: str,
        *,
        max_body_bytes: int = 1_048_576,
        timeout: float | None = None,
    ) -> None:
        # `session`: the UpstreamPool to use (see _pool_of for anything else).
        self._pool = _pool_of(session)
        self._host, self._port = parse_endpoint("address", address)
        # Updated from the config by the sidecar; the inbound side works before any config.
        self.max_body_bytes = max_body_bytes
        self._timeout = timeout
        self.requests = 0
        self.failures = 0

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The aiohttp handler of an inbound listener."""
        self.requests += 1
        problem = framing_error(request)
        if problem is not None:
            return problem
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            return _plain(413, f"request body over {self.max_body_bytes} bytes\n", close=True)
        body = _RequestBody(request.content, self.max_body_bytes) if request.body_exists else None
        try:
            upstream = await self._pool.request(
                self._host,
                self._port,
                request.method,
                request.raw_path,
                request_headers(request, forwarded_for=True),
                None if body is None else body.chunks(),
                timeout=self._timeout,
            )
        except UpstreamError as error:
            if body is not None and body.failed:
                return _body_failure(body, self.max_body_bytes)
            self.failures += 1
            if isinstance(error, UpstreamTimeout):
                return _plain(504, "local app did not answer in time\n")
            return _plain(502, f"local app unreachable: {type(error).__name__}\n")
        try:
            return await relay(request, upstream)
        finally:
            upstream.release()


def forward_to(
    session: UpstreamPool | object | None, address: str, **options: object
) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """Return an aiohttp handler forwarding every request to `address` ("host:port")."""
    return InboundForwarder(session, address, **options).handle  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Outbound: route table, per-upstream breakers, timeouts and retries.


class Upstream:
    """One cluster+subset: its endpoints, picked round-robin, and its circuit breaker."""

    __slots__ = ("name", "endpoints", "breaker", "settings", "requests", "failures",
                 "_addresses", "_next")

    def __init__(self, name: str, endpoints: tuple[str, ...], settings: BreakerSettings,
                 clock: Callable[[], float]) -> None:
        self.name = name
        self.requests = 0
        self.failures = 0
        self._set_endpoints(endpoints)
        self._set_breaker(settings, clock)

    def _set_endpoints(self, endpoints: tuple[str, ...]) -> None:
        self.endpoints = endpoints
        self._addresses = tuple(parse_endpoint(self.name, endpoint) for endpoint in endpoints)
        self._next = 0

    def _set_breaker(self, settings: BreakerSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.breaker = CircuitBreaker(
            failure_threshold=settings.failure_threshold,
            recovery_timeout=settings.recovery_timeout_seconds,
            half_open_max_calls=settings.half_open_max_calls,
            success_threshold=settings.success_threshold,
            clock=clock,
            name=self.name,
        )

    def update(self, endpoints: tuple[str, ...], settings: BreakerSettings,
               clock: Callable[[], float]) -> None:
        """Take a new config's view of this upstream, keeping whatever state still fits."""
        if endpoints != self.endpoints:
            self._set_endpoints(endpoints)
        # The breaker describes the health of this cluster+subset, not of one endpoint list,
        # so it survives endpoint changes; new thresholds need a new breaker.
        if settings != self.settings:
            self._set_breaker(settings, clock)

    def next_address(self) -> tuple[str, int]:
        """The next endpoint's (host, port), round-robin."""
        addresses = self._addresses
        index = self._next
        self._next = index + 1 if index + 1 < len(addresses) else 0
        return addresses[index]


@dataclass(frozen=True)
class _Target:
    """What a Host name leads to: one fixed upstream, or a route table to consult per request."""

    fixed: Upstream | None = None
    table: RouteTable | None = None
    by_path: bool = False
    by_headers: bool = False


@dataclass(frozen=True)
class _Settings:
    """Everything the hot path reads from a config, precomputed once per version."""

    config: ProxyConfig
    targets: Mapping[str, _Target]
    fallback: _Target | None  # for any host, when the routes list no hosts or "*"
    upstreams: Mapping[Destination, Upstream]
    first_timeout: float  # seconds for the first try: per-try and overall timeout, whichever is less
    retries: bool  # whether a failed try may be followed by another


# The cache of raw Host values -> targets stays small; a client sending random Host names
# only gets 404s, never a growing dictionary.
HOST_CACHE_SIZE = 256


class OutboundProxy:
    """The outbound side of one app: routes by Host, breaker per upstream, timeouts, retries."""

    def __init__(
        self,
        session: UpstreamPool | object | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        metrics: object | None = None,
        name: str = "",
        rng: random.Random | None = None,
    ) -> None:
        # `session`: the UpstreamPool to use; anything else (an aiohttp ClientSession, as before
        # the pool existed, or None) gets a pool of this proxy's own.
        self._pool = _pool_of(session)
        self._own_pool = self._pool is not session
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self.name = name
        self._settings: _Settings | None = None
        self._table: RouteTable | None = None
        self._upstreams: dict[str, Upstream] = {}
        self._host_cache: dict[str, _Target | None] = {}
        # Plain ints, bumped on the hot path and read by /metrics at scrape time.
        self.requests = 0
        self.failures = 0
        self.retries = 0
        self.answered_nowait = 0  # requests answered wholly on the fast lane (handle_nowait)
        self.responses: dict[int, int] = {}
        self._duration = None
        self._untrack: list[Callable[[], None]] = []
        if metrics is not None:
            self._register(metrics)

    # ----- configuration ---------------------------------------------------------------------

    @property
    def config(self) -> ProxyConfig | None:
        """The config in use, or None before the first one."""
        return None if self._settings is None else self._settings.config

    @property
    def breakers(self) -> dict[str, CircuitBreaker]:
        """Every upstream's breaker, by upstream name (`cluster/subset`, or `cluster`)."""
        return {name: upstream.breaker for name, upstream in self._upstreams.items()}

    @property
    def per_destination(self) -> dict[str, int]:
        """Requests sent to each upstream so far (tries, not client requests)."""
        return {name: upstream.requests for name, upstream in self._upstreams.items()}

    # --8<-- [start:apply]
    def apply(self, config: ProxyConfig) -> None:
        """Switch to `config` (already validated), keeping the state of unchanged parts."""
        clusters = config.clusters
        wanted: dict[str, tuple[Destination, tuple[str, ...]]] = {}
        for cluster, subsets in clusters.items():
            # A Host that names a cluster but no route goes to all its endpoints (Istio's
            # default for a service without a VirtualService), under a breaker of its own.
            everything = tuple(
                dict.fromkeys(endpoint for endpoints in subsets.values() for endpoint in endpoints)
            )
            wanted[cluster] = (Destination(cluster), everything)
            for subset, endpoints in subsets.items():
                destination = Destination(cluster, subset)
                wanted[str(destination)] = (destination, endpoints)
        upstreams: dict[str, Upstream] = {}
        by_destination: dict[Destination, Upstream] = {}
        for name, (destination, endpoints) in wanted.items():
            upstream = self._upstreams.get(name)
            if upstream is None:
                upstream = Upstream(name, endpoints, config.breaker, self._clock)
            else:
                upstream.update(endpoints, config.breaker, self._clock)
            upstreams[name] = by_destination[destination] = upstream

        spec = config.routes_spec()
        subsets = config.subsets()
        old = self._settings
        if self._table is not None and old is not None and old.config.subsets() == subsets:
            # Same subsets: update in place, so unchanged rules keep their round-robin place.
            self._table.update(spec)
        else:
            self._table = RouteTable.from_dict(spec, subsets)
        routed = self._route_target(self._table, spec, by_destination)

        targets: dict[str, _Target] = {
            cluster: _Target(fixed=upstreams[cluster]) for cluster in clusters
        }
        hosts = [host.lower() for host in spec.get("hosts", [])]
        for host in hosts:
            targets[host] = routed
        fallback = routed if not hosts or "*" in hosts else None
        per_try = config.retries.per_try_timeout_seconds
        self._settings = _Settings(
            config=config,
            targets=targets,
            fallback=fallback,
            upstreams=by_destination,
            first_timeout=min(per_try, config.timeout_seconds),
            retries=config.retries.attempts > 0,
        )
        self._upstreams = upstreams
        self._host_cache = {}
    # --8<-- [end:apply]

    @staticmethod
    def _route_target(table: RouteTable, spec: Mapping, by_destination: Mapping) -> _Target:
        rules = spec["http"]
        first = rules[0]
        if not first.get("match") and len(first["route"]) == 1:
            # The first rule matches everything and has one destination: the decision is the
            # same for every request, so make it once here instead of once per request.
            destination = first["route"][0]["destination"]
            key = Destination(destination["host"], destination.get("subset"))
            return _Target(fixed=by_destination[key])
        matches = [match for rule in rules for match in rule.get("match", [])]
        return _Target(
            table=table,
            by_path=any("uri" in match for match in matches),
            # Lower-casing every header per request is the route table's main cost; skip it
            # when no rule looks at headers.
            by_headers=any(match.get("headers") for match in matches)
            or any(rule.get("consistentHash") for rule in rules),
        )

    def _target(self, settings: _Settings, host_field: str | None) -> _Target | None:
        cache = self._host_cache
        try:
            return cache[host_field or ""]
        except KeyError:
            pass
        # The Host field's name without its port, like Envoy's virtual host matching.
        name = (host_field or "").lower()
        if name.startswith("[") and "]" in name:
            name = name[: name.index("]") + 1]  # an IPv6 literal keeps its brackets
        else:
            name = name.partition(":")[0]
        target = settings.targets.get(name, settings.fallback)
        if len(cache) < HOST_CACHE_SIZE:
            cache[host_field or ""] = target
        return target

    # ----- the hot path ----------------------------------------------------------------------

    # --8<-- [start:handle]
    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """The aiohttp handler of an outbound listener."""
        settings = self._settings
        self.requests += 1
        if settings is None:
            return _plain(503, "no config yet: the sidecar has not received its first config\n")
        problem = framing_error(request)
        if problem is not None:
            return problem
        path = request.raw_path
        host_field = request.headers.get("Host")
        if not path.startswith("/") and path != "*":
            # absolute-form (`GET http://reviews/1`), as sent by clients that use this
            # listener as their HTTP proxy; its authority overrides Host (RFC 9112 3.2.2).
            url = URL(path, encoded=True)
            host_field, path = url.raw_authority, url.raw_path_qs
        target = self._target(settings, host_field)
        if target is None:
            return _plain(404, f"no route for host {host_field!r}\n")
        try:
            upstream = self._upstream(settings, target, path, request.headers)
        except NoRouteError:
            return _plain(404, f"no route for {host_field!r} {path}\n")
        config = settings.config
        length = request.content_length
        if length is not None and length > config.max_body_bytes:
            return _plain(413, f"request body over {config.max_body_bytes} bytes\n", close=True)
        return await self._exchange(request, path, upstream, settings, self._clock())
    # --8<-- [end:handle]

    @staticmethod
    def _upstream(settings: _Settings, target: _Target, path: str,
                  headers: CIMultiDictProxy[str]) -> Upstream:
        """The upstream `target` leads to for this request; raises NoRouteError."""
        if target.fixed is not None:
            return target.fixed
        destination = target.table.route(  # type: ignore[union-attr]
            path if target.by_path else "/", headers if target.by_headers else None)
        return settings.upstreams[destination]

    # --8<-- [start:nowait]
    def handle_nowait(self, request: ProxyRequest) -> bool:
        """The fast lane, a ProxyListener fast handler: forward the common request by callbacks.

        Takes a request without a body, in origin-form, for a known host, when an idle
        keep-alive connection to the upstream is ready; answers it in the event-loop pass that
        reads the upstream's response, when that response is whole and small and not to be
        retried. Anything else on the way (a retry, a timeout, a streamed body, no idle
        connection) goes on in `_exchange`, from where the fast lane stopped: one set of rules.
        """
        settings = self._settings
        headers = request.headers
        path = request.raw_path
        if (settings is None or "Content-Length" in headers or "Transfer-Encoding" in headers
                or not path.startswith("/")):
            return False  # the framing checks, absolute-form and the 503 live in handle()
        host_field = headers.get("Host")
        fields = raw_end_to_end(headers, request.raw_headers, _REQUEST_DROPPED_RAW,
                                request.version)
        if host_field is None or fields is None:
            return False
        target = self._host_cache.get(host_field) or self._target(settings, host_field)
        if target is None:
            return False
        upstream = target.fixed
        if upstream is None:
            try:
                upstream = self._upstream(settings, target, path, headers)
            except NoRouteError:
                return False
        # Routed: from here on the request is taken, so the route table is not asked twice.
        self.requests += 1
        started = self._clock()
        try:
            permit = upstream.breaker.acquire()
        except CircuitOpenError:
            request.continue_with(self._exchange(request, path, upstream, settings, started))
            return True
        upstream.requests += 1
        host, port = upstream.next_address()
        method = request.method

        def on_response(result: UpstreamResponse | UpstreamError | None) -> None:
            if result is None:
                # The keep-alive race: nothing came back, so send once more on a new connection.
                self._hand_over(request, path, upstream, settings, started, permit,
                                self._new_connection_try(request, path, host, port, settings))
            elif not (isinstance(result, UpstreamResponse) and self._finish_nowait(
                    request, settings, upstream, permit, result, started)):
                self._hand_over(request, path, upstream, settings, started, permit,
                                _outcome(result))

        head = b"".join((method.encode(), b" ", path.encode("utf-8", "surrogateescape"),
                         b" HTTP/1.1\r\n", fields, b"\r\n"))
        if not self._pool.send_nowait(host, port, method, head, on_response,
                                      timeout=settings.first_timeout):
            # No idle connection: connecting takes awaiting, so the try goes on in a task.
            self._hand_over(request, path, upstream, settings, started, permit,
                            self._new_connection_try(request, path, host, port, settings))
        return True

    def _new_connection_try(self, request: ProxyRequest, path: str, host: str, port: int,
                            settings: _Settings) -> Awaitable[UpstreamResponse]:
        return self._pool.request(host, port, request.method, path,
                                  request_headers(request, forwarded_for=False),
                                  timeout=settings.first_timeout)

    def _hand_over(self, request: ProxyRequest, path: str, upstream: Upstream,
                   settings: _Settings, started: float, permit: Permit,
                   first: Awaitable[UpstreamResponse]) -> None:
        """Give the request, with the try begun for it, to the slow lane."""
        request.continue_with(
            self._exchange(request, path, upstream, settings, started, (permit, first)))

    def _finish_nowait(self, request: ProxyRequest, settings: _Settings, upstream: Upstream,
                       permit: Permit, response: UpstreamResponse, started: float) -> bool:
        """Answer from `response` if it is final and whole already; else False, nothing done."""
        status = response.status
        content = response.content
        if (status in RETRY_STATUSES and settings.retries
                and request.method in IDEMPOTENT_METHODS):
            return False  # to be retried: _exchange decides, with its backoff and deadline
        # The fields first: once the body is read, the slow lane could no longer relay it.
        fields = raw_end_to_end(response.headers, response.raw_headers, _RESPONSE_DROPPED_RAW,
                                response.version)
        if fields is None:
            return False
        if request.method == "HEAD" or content is EMPTY_PAYLOAD:
            body = b""
        elif content.is_eof() and content.exception() is None:
            body = content.read_nowait()
        else:
            return False  # the body is still on its way, or large: relay() streams it
        # The client first, the bookkeeping after: the client reads its answer meanwhile.
        try:
            request.respond(status, response.reason, fields, body)
        finally:
            response.release()
            self.answered_nowait += 1
            self._settle(upstream, permit, status)
            if self._duration is not None:
                self._duration.observe(self._clock() - started)
        return True
    # --8<-- [end:nowait]

    def _settle(self, upstream: Upstream, permit: Permit, status: int) -> None:
        """The breaker's verdict on a response, and the counters of what the client gets."""
        if status >= 500:
            upstream.breaker.record_failure(permit)
            upstream.failures += 1
            self.failures += 1
        else:
            upstream.breaker.record_success(permit)
        self.responses[status] = self.responses.get(status, 0) + 1

    # --8<-- [start:exchange]
    async def _exchange(self, request: web.BaseRequest, path: str, upstream: Upstream,
                        settings: _Settings, started: float,
                        first: tuple[Permit, Awaitable[UpstreamResponse]] | None = None,
                        ) -> web.StreamResponse:
        """Send, retry and relay; `first`: a try the fast lane began, with its permit."""
        try:
            return await self._tries(request, path, upstream, settings, started, first)
        finally:
            if self._duration is not None:
                self._duration.observe(self._clock() - started)

    async def _tries(self, request: web.BaseRequest, path: str, upstream: Upstream,
                     settings: _Settings, started: float,
                     first: tuple[Permit, Awaitable[UpstreamResponse]] | None,
                     ) -> web.StreamResponse:
        config = settings.config
        retries = config.retries
        method = request.method
        headers: list[tuple[str, str]] | None = None  # made when a try needs them
        body = _RequestBody(request.content, config.max_body_bytes) if request.body_exists else None
        budget = retries.attempts if method in IDEMPOTENT_METHODS else 0
        deadline = started + config.timeout_seconds
        timeout = settings.first_timeout
        attempt = 0
        while True:
            if first is not None:
                permit, sending = first
                first = None
            else:
                try:
                    permit = upstream.breaker.acquire()
                except CircuitOpenError as error:
                    return self._breaker_open(upstream, error)
                upstream.requests += 1
                host, port = upstream.next_address()
                if headers is None:
                    headers = request_headers(request, forwarded_for=False)
                sending = self._pool.request(host, port, method, path, headers,
                                             None if body is None else body.chunks(),
                                             timeout=timeout)
            failure: web.Response | None = None
            try:
                response = await sending
            except asyncio.CancelledError:
                # The client went away: that says nothing about the upstream's health.
                upstream.breaker.release(permit)
                raise
            except UpstreamError as error:
                if body is not None and (body.failed or isinstance(error, RequestBodyError)):
                    # The client's body, not the upstream, broke the exchange: no verdict.
                    upstream.breaker.release(permit)
                    return _body_failure(body, config.max_body_bytes)
                upstream.breaker.record_failure(permit)
                if isinstance(error, UpstreamTimeout):
                    failure = _plain(504, f"upstream {upstream.name} timed out\n")
                else:
                    failure = _plain(502,
                                     f"upstream {upstream.name} failed: {type(error).__name__}\n")
                if isinstance(error, UpstreamProtocolError):
                    budget = 0  # a malformed response will be malformed again
            else:
                status = response.status
                if not (status in RETRY_STATUSES and self._may_retry(attempt, budget, body)):
                    self._settle(upstream, permit, status)
                    try:
                        return await relay(request, response)
                    finally:
                        response.release()
                upstream.breaker.record_failure(permit)
                response.release()
            if failure is not None and not self._may_retry(attempt, budget, body):
                upstream.failures += 1
                self.failures += 1
                self.responses[failure.status] = self.responses.get(failure.status, 0) + 1
                return failure
            # Back off with full jitter, then try again within what is left of the deadline.
            remaining = deadline - self._clock()
            ceiling = min(retries.backoff_max_seconds, retries.backoff_base_seconds * 2**attempt)
            delay = self._rng.uniform(0, ceiling)
            if remaining - delay <= 0:
                return failure or _plain(504, f"upstream {upstream.name}: deadline reached\n")
            await asyncio.sleep(delay)
            attempt += 1
            self.retries += 1
            timeout = min(retries.per_try_timeout_seconds, deadline - self._clock())
    # --8<-- [end:exchange]

    @staticmethod
    def _may_retry(attempt: int, budget: int, body: _RequestBody | None) -> bool:
        # Once a byte of the body has been read from the client it cannot be sent again.
        return attempt < budget and (body is None or not body.started)

    def _breaker_open(self, upstream: Upstream, error: CircuitOpenError) -> web.Response:
        self.failures += 1
        self.responses[503] = self.responses.get(503, 0) + 1
        if error.state is State.OPEN:
            text = (f"upstream {upstream.name} unavailable: circuit breaker open, "
                    f"next trial in {error.remaining:.1f}s\n")
        else:
            text = f"upstream {upstream.name} unavailable: circuit breaker half-open, trial busy\n"
        # Retry-After in whole seconds, at least 1: 0 would invite an immediate retry storm.
        retry_after = str(max(1, int(error.remaining + 0.999)))
        return _plain(503, text, **{"x-sidecarlab-breaker": "open", "Retry-After": retry_after})

    # ----- metrics ---------------------------------------------------------------------------

    def _register(self, registry) -> None:  # type: ignore[no-untyped-def]
        name = self.name
        requests = registry.counter(
            "sidecarlab_upstream_requests_total",
            "Tries sent to each upstream (cluster/subset), retries included.",
            ("proxy", "upstream"),
        )
        failures = registry.counter(
            "sidecarlab_upstream_failures_total",
            "Requests answered with an upstream failure (5xx, reset, timeout, breaker open).",
            ("proxy", "upstream"),
        )
        responses = registry.counter(
            "sidecarlab_responses_total", "Responses sent to clients, by status code.",
            ("proxy", "code"),
        )
        retries = registry.counter(
            "sidecarlab_retries_total", "Retries made after a failed try.", ("proxy",)
        )
        breaker = registry.gauge(
            "sidecarlab_breaker_state",
            "1 for the state each upstream's circuit breaker is in, 0 for the others.",
            ("proxy", "upstream", "state"),
        )
        self._duration = registry.histogram(
            "sidecarlab_request_duration_seconds",
            "Time from a request's arrival to its last response byte, retries included.",
            ("proxy",),
        ).labels(name)

        def breaker_states() -> dict[tuple[str, ...], float]:
            out: dict[tuple[str, ...], float] = {}
            for upstream_name, upstream in self._upstreams.items():
                current = upstream.breaker.state
                for state in State:
                    out[(name, upstream_name, state.value)] = 1 if state is current else 0
            return out

        self._untrack = [
            requests.track(lambda: {(name, n): u.requests for n, u in self._upstreams.items()}),
            failures.track(lambda: {(name, n): u.failures for n, u in self._upstreams.items()}),
            responses.track(lambda: {(name, str(code)): n for code, n in self.responses.items()}),
            retries.track(lambda: {(name,): self.retries}),
            breaker.track(breaker_states),
        ]

    def close(self) -> None:
        """Stop reporting metrics (the node agent calls this when an app deregisters)."""
        for untrack in self._untrack:
            untrack()
        self._untrack = []
        if self._own_pool:
            self._pool.close_idle()
