"""A lean HTTP/1.1 listener for proxies: aiohttp's parser and response types, little else.

A proxy's listener hands every request to one handler. aiohttp's server around that handler
(`web.Server`) does more per request than a proxy needs: a request object with lazy
properties, a payload writer, a task loop per connection, header preparation for every
response. This listener keeps the parts that matter for safety and drops the rest:

- requests are parsed by aiohttp's own parser (llhttp in C), with its size limits;
- handlers keep aiohttp's signature, `async def handle(request) -> web.StreamResponse`, and
  the request object has the attributes of `web.BaseRequest` that proxies read;
- a `web.Response` the handler returns unprepared (the common case: a whole, small body) is
  written by this module in one `write`; a `web.StreamResponse` the handler prepared itself
  (a streamed body) goes through aiohttp's writer as usual;
- an optional fast handler, a plain function, may take a request without a body and answer
  it from callbacks, with no task and no coroutine: a task per request, and the event-loop
  passes it takes to start and to resume, are a large share of a small proxied request's
  cost (the lab's data path measures the sidecar with its fast lane on and off). What it does
  not take, or hands back with `request.continue_with(...)`, the handler serves.

    listener = ProxyListener(handler, fast=None)
    port = await listener.start("127.0.0.1", 0)
    ...
    await listener.stop_accepting()     # new connections refused, idle ones closed
    await listener.close()              # what is still open is closed

`ProxyListener` also has the shape `DrainController.stop_accepting()` expects of an aiohttp
runner (`sites`, `server.connections`), so the drain works with it unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from aiohttp import HttpVersion11, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import HttpRequestParser, StreamWriter
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader

__all__ = ["FastHandler", "ProxyListener", "ProxyRequest", "drain_aware", "drain_aware_fast"]

log = logging.getLogger(__name__)

Handler = Callable[["ProxyRequest"], Awaitable[web.StreamResponse]]
# Takes a request (True) and later finishes it with request.respond() or .continue_with(),
# or leaves it (False) to the handler.
FastHandler = Callable[["ProxyRequest"], bool]

READ_LIMIT = 2**16  # request body bytes buffered before the client's socket stops being read
# Pipelined requests parsed ahead of the one being served; past this the socket stops being
# read, so a client cannot make the listener queue requests without bound.
MAX_QUEUED = 32
KEEP_ALIVE_TIMEOUT = 75.0  # idle seconds before a keep-alive connection is closed (as aiohttp)

# Statuses whose responses never carry a body (RFC 9110 sections 6.4.1 and 15.3.5).
NO_BODY = frozenset({204, 304})


class _Date:
    """The Date field, formatted once a second rather than once a response."""

    __slots__ = ("_second", "_value", "_encoded")

    def __init__(self) -> None:
        self._second = -1
        self._value = ""
        self._encoded = b""

    def now(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = formatdate(second, usegmt=True)
            self._encoded = self._value.encode("ascii")
        return self._value

    def now_bytes(self) -> bytes:
        if int(time.time()) != self._second:
            self.now()
        return self._encoded


_date = _Date()


class ProxyRequest:
    """One parsed request: the attributes of aiohttp's `BaseRequest` that a proxy reads."""

    __slots__ = ("method", "raw_path", "version", "headers", "raw_headers", "content",
                 "keep_alive", "remote", "transport", "_conn", "_message", "_writer")

    def __init__(self, message: Any, payload: StreamReader, conn: _Connection) -> None:
        self._message = message
        self.method: str = message.method
        self.raw_path: str = message.path  # the target as sent, query included
        self.version = message.version
        self.headers = message.headers
        self.raw_headers = message.raw_headers
        self.content = payload
        self.keep_alive: bool = not message.should_close
        self.remote: str | None = conn.remote
        self.transport = conn.transport
        self._conn = conn
        self._writer: StreamWriter | None = None

    @property
    def _payload_writer(self) -> StreamWriter:
        """What aiohttp's StreamResponse.prepare() writes through; made for streamed answers only."""
        if self._writer is None:
            self._writer = StreamWriter(self._conn, self._conn._loop)
        return self._writer

    @property
    def path(self) -> str:
        return self.raw_path.partition("?")[0]

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return None if value is None else int(value)  # the parser accepted digits only

    @property
    def body_exists(self) -> bool:
        return self.content is not EMPTY_PAYLOAD

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        """Called by StreamResponse.prepare(); nothing to add here."""

    # The two ways a fast handler that took this request finishes it; exactly one, once.
    def respond(self, status: int, reason: str, fields: bytes, body: bytes) -> None:
        """Answer now with a whole response, written in one piece.

        `fields`: header lines, encoded, each ending in CRLF; the listener adds Content-Length,
        Date and Connection where they are missing.
        """
        self._conn.finish_fast(self, status, reason, fields, body)

    def continue_with(self, answer: Awaitable[web.StreamResponse]) -> None:
        """Answer with what `answer` returns, served as a handler's response is."""
        self._conn.continue_fast(self, answer)


class _Connection(BaseProtocol):
    """One client connection: parses requests and serves them one after another."""

    __slots__ = ("listener", "remote", "idle_since", "_parser", "_queue", "_task", "_closing",
                 "_paused_for_queue", "_fast", "_fast_done")

    def __init__(self, listener: ProxyListener, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.listener = listener
        self.remote: str | None = None
        self.idle_since = loop.time()
        self._parser = HttpRequestParser(self, loop, READ_LIMIT,
                                         payload_exception=web.HTTPBadRequest,
                                         auto_decompress=False)  # bodies pass on as they are
        self._queue: deque[tuple[Any, StreamReader]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._closing = False  # close once the response being served is out
        self._paused_for_queue = False
        self._fast: ProxyRequest | None = None  # a request the fast handler is serving
        self._fast_done: asyncio.Future[None] | None = None  # for cleanup() to wait on it

    # ----- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, (tuple, list)) else None
        self.listener.connections.add(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.listener.connections.discard(self)
        parser, self._parser = self._parser, None
        if parser is not None:
            try:
                parser.feed_eof()  # wakes a handler reading a body cut short
            except Exception:
                pass
        for _, payload in self._queue:
            payload.feed_eof()
        self._queue.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the client is gone: nobody will read the answer
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or (self._closing and not self.busy):
            return
        try:
            messages, upgraded, _ = parser.feed_data(data)
        except HttpProcessingError as error:
            self._reject(error.code or 400, error.message or "bad request")
            return
        except Exception as error:  # anything the parser raises means the bytes are not HTTP
            self._reject(400, str(error) or "bad request")
            return
        for message, payload in messages:
            if message.upgrade:
                # The proxy strips Upgrade as hop-by-hop, so it cannot relay a protocol switch.
                self._queue.append((None, payload))
                break
            self._queue.append((message, payload))
        if upgraded:
            self._parser = None  # bytes after an upgrade request are not HTTP requests
        if self._queue and self._task is None and self._fast is None:
            self._next()
        if len(self._queue) > MAX_QUEUED and not self._paused_for_queue:
            self._paused_for_queue = True
            self.pause_reading()

    def eof_received(self) -> bool:
        return False  # a half-closed client is closed; a request in progress learns it

    @property
    def busy(self) -> bool:
        """Serving a request, on a task or on the fast handler."""
        return self._task is not None or self._fast is not None

    def close(self) -> None:
        """Close after the response being served, or now if none is."""
        self._closing = True
        if not self.busy and self.transport is not None:
            self.transport.close()

    # ----- the fast lane -------------------------------------------------------------------------

    def _next(self) -> None:
        """Serve the queue's next request: on the fast handler if it takes it, else on a task."""
        fast = self.listener.fast
        queue = self._queue
        if fast is not None and len(queue) == 1 and not self._closing:
            message, payload = queue[0]
            if (message is not None and not isinstance(message, _Rejected)
                    and payload is EMPTY_PAYLOAD and "Expect" not in message.headers):
                request = ProxyRequest(message, payload, self)
                queue.popleft()
                self._fast = request
                try:
                    taken = fast(request)
                except Exception:
                    # It may have sent the request on already: not to be served a second time.
                    log.exception("fast handler failed for %s %s", message.method, message.path)
                    if self._fast is request:
                        self._closing = True
                        self.finish_fast(request, 500, "Internal Server Error",
                                         b"Content-Type: text/plain; charset=utf-8\r\n",
                                         b"internal error in the proxy\n")
                    return
                if taken:
                    return
                # Not taken: the handler serves it on a task, as it serves everything else.
                self._fast = None
                queue.appendleft((message, payload))
        self._task = self._loop.create_task(self._serve())

    def finish_fast(self, request: ProxyRequest, status: int, reason: str, fields: bytes,
                    body: bytes) -> None:
        if self._fast is not request:
            raise RuntimeError("this request was answered already")
        transport = self.transport
        if transport is not None:
            keep_alive = request.keep_alive and not self.listener.closing and not self._closing
            transport.write(_serialise(request, status, reason, fields, body, keep_alive))
            if not keep_alive:
                self._closing = True
        self._fast_finished()

    def continue_fast(self, request: ProxyRequest, answer: Awaitable[web.StreamResponse]) -> None:
        if self._fast is not request:
            raise RuntimeError("this request was answered already")
        self._task = task = self._loop.create_task(self._serve(request, answer))
        self._fast = None
        if self._fast_done is not None:
            # cleanup() is waiting on this request: it now waits for the task that serves it.
            task.add_done_callback(lambda _: self._wake_cleanup())

    def _fast_finished(self) -> None:
        self._fast = None
        if self._fast_done is not None:
            self._wake_cleanup()
        self.idle_since = self._loop.time()
        if self._closing:
            if self.transport is not None:
                self.transport.close()
        elif self._queue and self.transport is not None:
            self._next()

    def _wake_cleanup(self) -> None:
        done, self._fast_done = self._fast_done, None
        if done is not None and not done.done():
            done.set_result(None)

    def wait_idle(self) -> Awaitable[None]:
        """An awaitable that is done once the request being served is answered."""
        if self._task is not None:
            return self._task
        if self._fast_done is None:
            self._fast_done = self._loop.create_future()
        if self._fast is None:
            self._fast_done.set_result(None)
        return self._fast_done

    # ----- serving -------------------------------------------------------------------------------

    def _reject(self, status: int, reason: str) -> None:
        """Answer bytes that could not be parsed, after the requests before them; then close."""
        self._parser = None  # the stream is out of sync: nothing after this is a request
        if not self.busy and self.transport is not None:
            self._closing = True
            self.transport.write(_plain_bytes(status, reason))
            self.transport.close()
        else:
            # Its turn comes after the requests before it, which are still answered; serving
            # it (_serve_special) closes the connection.
            self._queue.append((_Rejected(status, reason), EMPTY_PAYLOAD))

    async def _serve(self, first: ProxyRequest | None = None,
                     answer: Awaitable[web.StreamResponse] | None = None) -> None:
        queue = self._queue
        try:
            if first is not None:
                # A request the fast handler started and handed over: its answer comes first.
                await self._serve_one(first, first.content, answer)
                if self._closing:
                    if self.transport is not None:
                        self.transport.close()
                    return
            while queue and self.transport is not None:
                message, payload = queue.popleft()
                if self._paused_for_queue and len(queue) <= MAX_QUEUED // 2:
                    self._paused_for_queue = False
                    self.resume_reading()
                if not self._serve_special(message):
                    await self._serve_one(ProxyRequest(message, payload, self), payload)
                if self._closing:
                    if self.transport is not None:
                        self.transport.close()
                    return
        finally:
            self._task = None
            self.idle_since = self._loop.time()

    def _serve_special(self, message: Any) -> bool:
        """Write the answer to an upgrade or an unparsable request; True if it was one."""
        if isinstance(message, _Rejected):
            self.transport.write(_plain_bytes(message.status, message.reason))  # type: ignore[union-attr]
        elif message is None:
            self.transport.write(_plain_bytes(501, "protocol upgrades are not relayed"))  # type: ignore[union-attr]
        else:
            return False
        self._closing = True
        return True

    async def _serve_one(self, request: ProxyRequest, payload: StreamReader,
                         answer: Awaitable[web.StreamResponse] | None = None) -> None:
        if answer is None and (request.version >= HttpVersion11
                               and request.headers.get("Expect", "").lower() == "100-continue"):
            # The body is read (and forwarded) only once this arrives at the client.
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
        try:
            response = await (self.listener.handler(request) if answer is None else answer)
        except asyncio.CancelledError:
            if self.transport is not None:
                self.transport.abort()  # cut off mid-request: the client must not wait on it
            raise
        except Exception:
            log.exception("handler failed for %s %s", request.method, request.raw_path)
            response = web.Response(status=500, text="internal error in the proxy\n")
            response.force_close()
        if self.transport is None:
            return
        # An unread request body still sits on the connection: no next request can be found
        # behind it safely, so the connection closes after this answer.
        keep_alive = (request.keep_alive and not self.listener.closing and not self._closing
                      and payload.is_eof())
        if response.prepared:
            # Streamed through aiohttp's writer: its head and body are out already.
            if not response._eof_sent:  # noqa: SLF001  (aiohttp has no public flag for it)
                await response.write_eof()
            keep_alive = keep_alive and bool(response.keep_alive)
        else:
            keep_alive = keep_alive and response.keep_alive is not False
            self.transport.write(_response_bytes(request, response, keep_alive))
        if not keep_alive:
            self._closing = True


class _Rejected:
    __slots__ = ("status", "reason")

    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        self.reason = reason


def _plain_bytes(status: int, text: str) -> bytes:
    body = (text.rstrip("\n") + "\n").encode("utf-8", "replace")
    return (f"HTTP/1.1 {status} {_reason(status)}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nDate: {_date.now()}\r\nConnection: close\r\n\r\n"
            ).encode("latin-1") + body


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _response_bytes(request: ProxyRequest, response: web.Response, keep_alive: bool) -> bytes:
    """The whole response as one buffer: status line, fields, body."""
    body = response.body or b""
    if not isinstance(body, (bytes, bytearray)):
        raise TypeError(f"a response body of type {type(body).__name__} must be streamed")
    fields = "".join([f"{name}: {value}\r\n" for name, value in response.headers.items()])
    return _serialise(request, response.status, response.reason,
                      fields.encode("utf-8", "surrogateescape"), body, keep_alive)


def _serialise(request: ProxyRequest, status: int, reason: str, fields: bytes, body: bytes,
               keep_alive: bool) -> bytes:
    """Status line, encoded fields (with Content-Length, Date and Connection where needed), body."""
    has_length, has_date, has_connection = _FRAMING_SEEN.get(fields) or _framing(fields)
    bodiless = status in NO_BODY or 100 <= status < 200
    if not bodiless and not has_length:
        # A given Content-Length stays as it is: the answer to a HEAD request announces the
        # length a GET would have had, with no body.
        fields += b"Content-Length: %d\r\n" % len(body)
    if not has_date:
        fields += b"Date: %s\r\n" % _date.now_bytes()
    version = request.version
    if has_connection:
        pass  # a draining listener's answer names it already
    elif not keep_alive:
        fields += b"Connection: close\r\n"
    elif version is not HttpVersion11 and version < HttpVersion11:  # `is`: the parser's own
        fields += b"Connection: keep-alive\r\n"
    status_line = _STATUS_LINES.get((status, reason)) or _status_line(status, reason)
    if bodiless or request.method == "HEAD":
        return b"".join((status_line, fields, b"\r\n"))
    return b"".join((status_line, fields, b"\r\n", body))


# Small caches for the fast lane, which sees the same few values over and over: the fields of
# one upstream's answers, and a handful of status lines. Cleared when full, so a stream of
# new values costs a lookup each, never unbounded memory.
CACHE_SIZE = 256
_FRAMING_SEEN: dict[bytes, tuple[bool, bool, bool]] = {}
_STATUS_LINES: dict[tuple[int, str], bytes] = {}


def _framing(fields: bytes) -> tuple[bool, bool, bool]:
    """Whether encoded header lines include Content-Length, Date, and Connection."""
    known = _FRAMING_SEEN.get(fields)
    if known is None:
        lowered = b"\n" + fields.lower()  # so each name is found at the start of its line
        known = (b"\ncontent-length:" in lowered, b"\ndate:" in lowered,
                 b"\nconnection:" in lowered)
        if len(_FRAMING_SEEN) >= CACHE_SIZE:
            _FRAMING_SEEN.clear()
        _FRAMING_SEEN[fields] = known
    return known


def _status_line(status: int, reason: str) -> bytes:
    line = _STATUS_LINES.get((status, reason))
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason.encode("latin-1", "replace"))
        if len(_STATUS_LINES) >= CACHE_SIZE:
            _STATUS_LINES.clear()
        _STATUS_LINES[(status, reason)] = line
    return line


class _Site:
    """The listening socket, shaped like an aiohttp site for DrainController.stop_accepting()."""

    def __init__(self, listener: ProxyListener) -> None:
        self._listener = listener

    async def stop(self) -> None:
        await self._listener.stop_listening()


class ProxyListener:
    """A TCP listener serving every request with one handler, on `_Connection`s."""

    def __init__(self, handler: Handler, *, fast: FastHandler | None = None,
                 keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT,
                 shutdown_timeout: float = 1.0) -> None:
        self.handler = handler
        self.fast = fast
        self.keep_alive_timeout = keep_alive_timeout
        # cleanup() waits this long for requests in flight before it cuts them off.
        self.shutdown_timeout = shutdown_timeout
        self.connections: set[_Connection] = set()
        self.closing = False  # once True, every response says Connection: close
        self.addresses: list[Any] = []
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    # The attributes DrainController.stop_accepting() reads on an aiohttp runner.
    @property
    def sites(self) -> list[_Site]:
        return [_Site(self)] if self._server is not None else []

    @property
    def server(self) -> ProxyListener:
        return self

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: any free port); return the port bound."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self, loop), host, port,
                                                reuse_address=True, backlog=1024)
        self.addresses = [sock.getsockname() for sock in self._server.sockets]
        self._sweeper = loop.call_later(self.keep_alive_timeout / 2, self._sweep)
        return self.addresses[0][1]

    def _sweep(self) -> None:
        """Close keep-alive connections idle for longer than keep_alive_timeout."""
        loop = asyncio.get_running_loop()
        oldest_allowed = loop.time() - self.keep_alive_timeout
        for conn in list(self.connections):
            if not conn.busy and conn.idle_since < oldest_allowed and conn.transport:
                conn.transport.close()
        self._sweeper = loop.call_later(self.keep_alive_timeout / 2, self._sweep)

    async def stop_listening(self) -> None:
        """Refuse new connections; the open ones carry on."""
        if self._server is not None:
            # close() shuts the listening socket only; accepted connections stay open.
            self._server.close()
            self._server = None
        await asyncio.sleep(0)

    async def stop_accepting(self) -> None:
        """Refuse new connections and close open ones after the response they are busy with."""
        await self.stop_listening()
        self.closing = True
        for conn in list(self.connections):
            conn.close()

    async def cleanup(self) -> None:
        """Stop accepting, let requests in flight finish within shutdown_timeout, close the rest."""
        await self.stop_accepting()
        busy = [conn.wait_idle() for conn in self.connections if conn.busy]
        if busy:
            await asyncio.wait(busy, timeout=self.shutdown_timeout)
        await self.close()

    async def close(self) -> None:
        """Close everything at once (after a drain, what is left is abandoned)."""
        await self.stop_listening()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)



def drain_aware(drain: Any, handler: Handler) -> Handler:
    """Wrap `handler` so `drain` (a DrainController) counts its requests and closes keep-alive.

    What `DrainController.install()` adds to an aiohttp Application, minus its /healthz and
    /readyz routes, which on a proxy listener would shadow the upstream's own paths.
    """

    async def handle(request: ProxyRequest) -> web.StreamResponse:
        response = await drain.middleware(request, handler)
        if drain.draining:
            if response.prepared:
                # A streamed response has its head out already: no header, but the connection
                # still closes after it, so the client reconnects elsewhere all the same.
                response.force_close()
            else:
                await drain.on_response_prepare(request, response)
        return response

    return handle


def drain_aware_fast(drain: Any, fast: FastHandler) -> FastHandler:
    """Wrap a fast handler so that, once `drain` (a DrainController) drains, it takes nothing.

    Requests then go to the handler wrapped by drain_aware(), which counts them and closes
    keep-alive connections. Fast requests already in flight when the drain starts are not
    counted by it: the listener's cleanup() waits for them, within its shutdown_timeout.
    """

    def serve(request: ProxyRequest) -> bool:
        return not drain.draining and fast(request)

    return serve
