"""Keep-alive HTTP/1.1 connections to upstream endpoints, pooled per endpoint, for a proxy.

A proxy forwards requests it has already parsed, so a general HTTP client does more than it
needs: URL objects, cookie jars, redirects, auto headers, a timer context per request. This
pool writes the request as given and frames the response with aiohttp's own parser (llhttp in
C), which knows Content-Length, chunked, close-delimited, and HEAD/1xx/204/304 without body.

    pool = UpstreamPool()
    response = await pool.request("127.0.0.1", 9080, "GET", "/reviews/1",
                                  [("Host", "reviews")], timeout=2.0)
    try:
        body = await response.read()       # or: async for chunk in response.content.iter_any()
    finally:
        response.release()                 # back to the pool only if fully read and reusable
    await pool.close()
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable, Sequence
from typing import Any

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import HttpResponseParser, HttpVersion
from aiohttp.streams import EMPTY_PAYLOAD, StreamReader
from multidict import CIMultiDictProxy

__all__ = [
    "IDEMPOTENT_METHODS",
    "RequestBodyError",
    "UpstreamConnectError",
    "UpstreamDisconnected",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
]

# RFC 9110 section 9.2.2: sending these twice has the effect of sending them once.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Methods whose requests normally carry a body: without one, say `Content-Length: 0`, or some
# servers answer 411 Length Required.
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

READ_LIMIT = 2**16  # response bytes buffered before the upstream socket stops being read


class UpstreamError(Exception):
    """An exchange with an upstream failed; says how far it got, for retry decisions."""

    def __init__(self, message: str = "", *, sent: bool = True, received: bool = True) -> None:
        super().__init__(message)
        # sent: request bytes may have reached the upstream (it may have acted on them).
        # received: response bytes arrived (the upstream certainly acted on the request).
        # The defaults are the cautious answers: unknown means "maybe".
        self.sent = sent
        self.received = received


class UpstreamConnectError(UpstreamError):
    """No connection could be made: nothing was sent, so any request is safe to retry."""


class UpstreamDisconnected(UpstreamError):
    """The upstream closed or reset the connection before the response was complete."""


class UpstreamProtocolError(UpstreamError):
    """The upstream's response was not valid HTTP/1.1 (bad status line, framing, headers)."""


class UpstreamTimeout(UpstreamError, TimeoutError):
    """Connecting, or the whole exchange up to the last body byte, took too long."""


class RequestBodyError(UpstreamError):
    """Reading the request body from its source failed; the cause is in `__cause__`."""


class UpstreamResponse:
    """Status, headers and streamed body of one upstream response."""

    __slots__ = ("status", "reason", "version", "headers", "raw_headers", "content", "endpoint",
                 "_conn")

    def __init__(self, conn: _Connection, message: Any, content: StreamReader) -> None:
        self.status: int = message.code
        self.reason: str = message.reason
        self.version: HttpVersion = message.version
        self.headers: CIMultiDictProxy[str] = message.headers
        self.raw_headers: tuple[tuple[bytes, bytes], ...] = message.raw_headers
        self.content = content  # aiohttp StreamReader: read(), readany(), iter_any(), ...
        self.endpoint = conn.endpoint
        self._conn: _Connection | None = conn

    @property
    def content_length(self) -> int | None:
        """The Content-Length field as a number, or None when absent (chunked, close-delimited)."""
        value = self.headers.get("Content-Length")
        return None if value is None else int(value)  # llhttp accepted it: digits only

    async def read(self) -> bytes:
        """The whole body (for bodies known to be small)."""
        content = self.content
        if content.is_eof() and content.exception() is None:
            # The usual case for a small body: it arrived with the head and is complete, so
            # take the buffer as it is instead of awaiting it chunk by chunk.
            return content.read_nowait()
        return await content.read()

    def release(self) -> None:
        """Give the connection back: to the pool if the response was read to its end, else closed."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.finish()

    def close(self) -> None:
        """Drop the connection whatever state it is in."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()


class _Callback:
    """Stands in for the Future a request() awaits the head on: send_nowait's callback, called at once.

    A Future's callbacks run on the event loop's next pass; this runs inside data_received,
    so a proxy can answer its client in the same pass that read the upstream's response.
    """

    __slots__ = ("_conn", "_fn", "_replayable", "_done")

    def __init__(self, conn: _Connection, fn: Callable[[Any], None], replayable: bool) -> None:
        self._conn = conn
        self._fn = fn
        self._replayable = replayable  # the request may be sent again after the keep-alive race
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, message: Any) -> None:
        self._done = True
        self._fn(self._conn.response())

    def set_exception(self, error: UpstreamError) -> None:
        self._done = True
        # The connection came from the pool, a reused one: closed with nothing back is the
        # keep-alive race, the one failure request() also sends again (a timeout is not).
        race = isinstance(error, UpstreamDisconnected) and not error.received
        self._fn(None if race and self._replayable else error)


class _Connection(BaseProtocol):
    """One TCP connection; carries one exchange at a time, then waits in its pool."""

    __slots__ = ("pool", "key", "endpoint", "reused", "received", "idle_since", "_head",
                 "_message", "_payload", "_writer", "_timer", "_timer_at", "_deadline",
                 "_skips_body", "_broken", "_keep_alive")

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: UpstreamPool,
                 key: tuple[str, int], endpoint: str) -> None:
        super().__init__(loop)
        self.pool = pool
        self.key = key
        self.endpoint = endpoint
        self.reused = False
        self.received = False  # a byte of the current exchange's response arrived
        self.idle_since = 0.0
        self._head: asyncio.Future[Any] | None = None
        self._message: Any = None
        self._payload: StreamReader | None = None
        self._writer: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when _timer fires; it may be earlier than _deadline
        self._deadline: float | None = None  # of the current exchange
        self._skips_body = False  # the parser was made for a response to HEAD
        self._broken = False  # never to be reused, whatever the response says
        self._keep_alive = False

    # ----- asyncio.Protocol ----------------------------------------------------------------------

    def resume_reading(self, resume_parser: bool = True) -> None:
        # aiohttp's StreamReader calls this after every read below its low-water mark, paused
        # or not; unpaused, there is nothing to resume (and nothing is kept back to parse).
        if self._reading_paused:
            super().resume_reading(resume_parser)

    def data_received(self, data: bytes) -> None:
        if not data:
            # aiohttp's resume_reading() calls this with b"" so that a protocol which buffered
            # while paused parses what it kept; this one keeps nothing back.
            return
        parser = self._parser
        if parser is None or self._head is None:
            # Bytes while idle answer nothing we sent: the connection's state is unknown.
            self.abort()
            return
        self.received = True
        try:
            messages, upgraded, _ = parser.feed_data(data)
        except Exception as error:
            self._fail(UpstreamProtocolError(f"malformed response: {error}", received=True))
            return
        arrived = None
        for message, payload in messages:
            if self._message is not None or upgraded or message.upgrade:
                # A second response to one request, or a protocol switch nobody asked for.
                self._fail(UpstreamProtocolError("unexpected response data", received=True))
                return
            if 100 <= message.code < 200:
                continue  # interim responses (100 Continue, 103 Early Hints) are not forwarded
            self._message = arrived = message
            self._keep_alive = not message.should_close
            self._payload = payload
        head = self._head
        # Told only once the whole chunk is parsed: a waiter that runs at once (send_nowait's
        # callback) then sees every body byte that came with the head, and a second response
        # in the same chunk has already failed the exchange.
        if arrived is not None and head is not None and not head.done():
            head.set_result(arrived)

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost() finishes the exchange

    def connection_lost(self, exc: BaseException | None) -> None:
        parser, self._parser = self._parser, None
        self._broken = True
        payload = self._payload
        if parser is not None and self._head is not None:
            try:
                # Ends a close-delimited body; raises for a body cut short of its framing.
                parser.feed_eof()
            except Exception as error:
                if payload is not None and not payload.is_eof():
                    payload.set_exception(UpstreamDisconnected(
                        f"response body broken off: {error}", received=True))
        elif payload is not None and not payload.is_eof():
            payload.set_exception(UpstreamDisconnected("response body broken off",
                                                       received=True))
        head = self._head
        if head is not None and not head.done():
            head.set_exception(UpstreamDisconnected(
                "connection closed before a response" if exc is None else f"connection lost: {exc}",
                received=self.received,
            ))
        self._cancel_timer()
        super().connection_lost(exc)

    # ----- one exchange --------------------------------------------------------------------------

    def start(self, skip_body: bool, deadline: float | None,
              waiter: asyncio.Future[Any] | _Callback | None = None) -> asyncio.Future[Any] | _Callback:
        loop = self._loop
        if self._parser is None or self._skips_body != skip_body:
            # One parser serves every exchange of the connection: a keep-alive response ends
            # where the next one starts. Only a HEAD request changes how responses are framed.
            self._parser = HttpResponseParser(
                self, loop, READ_LIMIT,
                response_with_body=not skip_body,
                # A response without Content-Length or chunked coding ends when the upstream
                # closes.
                read_until_eof=True,
                auto_decompress=False,  # a proxy passes the bytes on as they are
                payload_exception=UpstreamProtocolError,
            )
            self._skips_body = skip_body
        self._head = head = loop.create_future() if waiter is None else waiter
        self._message = None
        self._payload = None
        self.received = False
        self._deadline = deadline
        if deadline is not None and (self._timer is None or self._timer_at > deadline):
            # A timer already set for no later than `deadline` is kept: when it fires it moves
            # itself on to the deadline. Exchanges much shorter than their timeout then share
            # one timer instead of each scheduling and cancelling their own.
            self._set_timer(deadline)
        return head

    def response(self) -> UpstreamResponse:
        message = self._message
        payload = self._payload
        if message.code in (204, 304) or payload is None:
            payload = EMPTY_PAYLOAD  # no body, whatever Content-Length says (RFC 9110 6.4.1)
        return UpstreamResponse(self, message, payload)

    def _set_timer(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._on_timeout)
        self._timer_at = when

    def _on_timeout(self) -> None:
        self._timer = None
        deadline = self._deadline
        if self._head is None or deadline is None:
            return  # idle, or an exchange without a timeout: nothing to time out
        if deadline > self._timer_at:
            self._set_timer(deadline)  # set for an earlier exchange; this one has longer
            return
        if self._message is not None and (self._payload is None or self._payload.is_eof()):
            return  # the response is complete; the caller just has not released it yet
        self._fail(UpstreamTimeout("upstream timed out", received=self.received))

    def _cancel_timer(self) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()

    def _fail(self, error: UpstreamError) -> None:
        """Wake whoever waits on this exchange with `error`, and drop the connection."""
        head = self._head
        if head is not None and not head.done():
            head.set_exception(error)
        payload = self._payload
        if payload is not None and not payload.is_eof():
            payload.set_exception(error)
        self.abort()

    def body_failed(self, error: BaseException) -> None:
        """The request body's source failed: the upstream must never see a complete request."""
        failure = RequestBodyError(f"request body failed: {error!r}", received=self.received)
        failure.__cause__ = error
        self._fail(failure)

    def finish(self) -> None:
        """The caller is done with the response: keep the connection if it is clean."""
        # The timer stays: the next exchange likely reuses it, and if none comes it fires once
        # and does nothing. The sweep closing idle connections cancels it with the connection.
        self._deadline = None
        writer = self._writer
        payload = self._payload
        if (
            self._broken
            or not self._keep_alive
            or (payload is not None and (not payload.is_eof() or payload.exception() is not None))
            or (writer is not None and not writer.done())
        ):
            # Bytes of this exchange may still be on the wire: the next one would read them.
            self.abort()
            return
        self._head = self._message = self._payload = self._writer = None
        self.reused = True
        self.pool._put(self)

    def abort(self) -> None:
        self._broken = True
        self._cancel_timer()
        writer = self._writer
        if writer is not None and not writer.done():
            writer.cancel()
        transport = self.transport
        if transport is not None:
            transport.abort()

    @property
    def usable(self) -> bool:
        transport = self.transport
        return not self._broken and transport is not None and not transport.is_closing()


class UpstreamPool:
    """Keep-alive connections to each upstream `host:port`, reused one exchange at a time."""

    def __init__(
        self,
        *,
        max_idle_per_endpoint: int = 64,
        idle_timeout: float = 30.0,
        connect_timeout: float | None = 5.0,
    ) -> None:
        # Idle connections beyond this are closed: after a burst the pool shrinks back instead
        # of holding a socket (and the upstream's worker) for every request of the peak.
        self.max_idle_per_endpoint = max_idle_per_endpoint
        # Shorter than the upstream's own keep-alive timeout (nginx 75 s, aiohttp 75 s) keeps
        # the pool from reusing a connection the upstream is about to close.
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False
        self.connections_made = 0  # for tests and metrics: how often keep-alive did not help

    # --8<-- [start:request]
    async def request(
        self,
        host: str,
        port: int,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | AsyncIterable[bytes] | None = None,
        *,
        timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send one request and return once the response head arrived; the body streams."""
        if self._closed:
            raise RuntimeError("the pool is closed")
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        head, chunked = _request_head(method, target, headers, host, port, body)
        # A body that streams from a source can be sent only once; bytes can be sent again.
        replayable = body is None or isinstance(body, bytes)
        conn = self._idle_connection(host, port)
        if conn is None:
            conn = await self._connect(host, port, deadline)
        try:
            return await self._exchange(conn, head, chunked, method, body, deadline)
        except UpstreamDisconnected as error:
            # The keep-alive race: the upstream closed an idle connection just as the request
            # went out. Nothing came back, so it most likely never saw the request; still, it
            # might have, so only an idempotent request is sent again, once, on a new connection.
            if not (conn.reused and not error.received and replayable
                    and method in IDEMPOTENT_METHODS):
                raise
        conn = await self._connect(host, port, deadline)
        return await self._exchange(conn, head, chunked, method, body, deadline)
    # --8<-- [end:request]

    # --8<-- [start:send_nowait]
    def send_nowait(
        self,
        host: str,
        port: int,
        method: str,
        head: bytes,
        callback: Callable[[UpstreamResponse | UpstreamError | None], None],
        *,
        timeout: float | None = None,
    ) -> bool:
        """Send a request without a body on an idle connection, without awaiting anything.

        `head` is the request as it goes out: request line and fields, encoded, ending in the
        empty line; the caller has checked it (request() builds and checks its own).

        Returns False, having sent nothing, when no idle connection to `host:port` is ready:
        making one must be awaited, so use request(). Otherwise `callback` is called once,
        later, from the event loop, with one of:

        - the UpstreamResponse, as soon as its head arrived (its body may still be on the way);
        - the UpstreamError that ended the exchange;
        - None: the reused connection broke before any answer, the keep-alive race that
          request() handles by sending once more on a new connection. Only for idempotent
          methods; for the others it is an UpstreamError like any other.
        """
        conn = self._idle_connection(host, port)
        if conn is None:
            return False
        # Out first, the exchange's bookkeeping after: nothing can arrive before this returns to
        # the event loop, and the upstream starts on the request meanwhile.
        conn.transport.write(head)  # type: ignore[union-attr]  (usable: it has one)
        deadline = None if timeout is None else conn._loop.time() + timeout
        conn.start(method == "HEAD", deadline,
                   _Callback(conn, callback, method in IDEMPOTENT_METHODS))
        return True
    # --8<-- [end:send_nowait]

    async def _exchange(self, conn: _Connection, head: bytes, chunked: bool, method: str,
                        body: bytes | AsyncIterable[bytes] | None,
                        deadline: float | None) -> UpstreamResponse:
        transport = conn.transport
        if transport is None or transport.is_closing():
            # The upstream closed (or reset) the connection between connecting and now, for
            # example a process that died with connections still in its accept queue.
            conn.abort()
            raise UpstreamDisconnected("connection closed before the request was sent",
                                       sent=False, received=False)
        waiter = conn.start(method == "HEAD", deadline)
        if body is None:
            transport.write(head)
        elif isinstance(body, bytes):
            transport.write(head + body)
        else:
            transport.write(head)
            # A task of its own, so the upstream can answer while the body still streams in
            # (full duplex): an upstream that replies early must not wait for the whole upload.
            conn._writer = asyncio.get_running_loop().create_task(
                _send_body(conn, body, chunked))
        try:
            await waiter
        except BaseException:
            conn.abort()
            raise
        return conn.response()

    def _idle_connection(self, host: str, port: int) -> _Connection | None:
        idle = self._idle.get((host, port))
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be closed by now
            transport = conn.transport
            if not conn._broken and transport is not None and not transport.is_closing():
                return conn  # (conn.usable, written out: this runs once a request)
        return None

    async def _connect(self, host: str, port: int, deadline: float | None) -> _Connection:
        loop = asyncio.get_running_loop()
        timeout = self.connect_timeout
        if deadline is not None:
            left = deadline - loop.time()
            timeout = left if timeout is None else min(timeout, left)
        endpoint = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            connecting = loop.create_connection(
                lambda: _Connection(loop, self, (host, port), endpoint), host, port)
            if timeout is None:
                _, conn = await connecting
            else:
                _, conn = await asyncio.wait_for(connecting, max(timeout, 0))
        except (asyncio.TimeoutError, TimeoutError):
            raise UpstreamTimeout(f"connecting to {endpoint} timed out",
                                  sent=False, received=False) from None
        except OSError as error:
            raise UpstreamConnectError(f"cannot connect to {endpoint}: {error}",
                                       sent=False, received=False) from error
        self.connections_made += 1
        return conn

    def _put(self, conn: _Connection) -> None:
        if self._closed:
            conn.abort()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= self.max_idle_per_endpoint:
            conn.abort()
            return
        loop = conn._loop
        conn.idle_since = loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.idle_timeout / 2, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle longer than idle_timeout; runs only while any are idle."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        oldest_allowed = loop.time() - self.idle_timeout
        for key, idle in list(self._idle.items()):
            # Oldest first: the list grows at its end, so expired ones form its start.
            keep = 0
            while keep < len(idle) and (idle[keep].idle_since < oldest_allowed
                                        or not idle[keep].usable):
                keep += 1
            for conn in idle[:keep]:
                conn.abort()
            del idle[:keep]
            if not idle:
                del self._idle[key]
        if self._idle and not self._closed:
            self._sweeper = loop.call_later(self.idle_timeout / 2, self._sweep)

    def idle_count(self, host: str, port: int) -> int:
        """How many connections to `host:port` wait in the pool."""
        return sum(1 for conn in self._idle.get((host, port), ()) if conn.usable)

    async def close(self) -> None:
        """Close every idle connection; connections in use close when they are released."""
        self.close_idle()
        await asyncio.sleep(0)  # let the transports run connection_lost()

    def close_idle(self) -> None:
        """close() for code that cannot await: the transports finish closing on their own."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
        self._idle.clear()


def _request_head(method: str, target: str, headers: Sequence[tuple[str, str]], host: str,
                  port: int, body: object) -> tuple[bytes, bool]:
    """The request line and fields, and whether the body goes out chunked."""
    lines = [f"{name}: {value}\r\n" for name, value in headers]
    names = {name.lower() for name, _ in headers}
    if "host" not in names:
        lines.append(f"Host: [{host}]:{port}\r\n" if ":" in host else f"Host: {host}:{port}\r\n")
    chunked = "transfer-encoding" in names
    if "content-length" not in names and not chunked:
        if body is None:
            if method in BODY_METHODS:
                lines.append("Content-Length: 0\r\n")
        elif isinstance(body, bytes):
            lines.append(f"Content-Length: {len(body)}\r\n")
        else:
            lines.append("Transfer-Encoding: chunked\r\n")
            chunked = True
    text = f"{method} {target} HTTP/1.1\r\n{''.join(lines)}\r\n"
    # A CR or LF inside a name, value or target would end the line early and let the rest pose
    # as fields of its own (header injection); the only ones allowed are the line ends.
    line_ends = len(lines) + 2
    if text.count("\n") != line_ends or text.count("\r") != line_ends or " " in method:
        raise ValueError("CR or LF in the request line or a header field")
    if target.count(" ") or not target:
        raise ValueError(f"invalid request target {target!r}")
    # surrogateescape gives back exactly the bytes aiohttp's server decoded.
    return text.encode("utf-8", "surrogateescape"), chunked


async def _send_body(conn: _Connection, chunks: AsyncIterable[bytes], chunked: bool) -> None:
    try:
        async for chunk in chunks:
            if not chunk:
                continue
            transport = conn.transport
            if transport is None or transport.is_closing():
                return  # the upstream went away; the reader of the response hears about it
            if chunked:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                transport.write(chunk)
            if conn.writing_paused:
                # The upstream reads slower than the client sends: wait instead of buffering.
                await conn._drain_helper()
        if chunked and conn.transport is not None:
            conn.transport.write(b"0\r\n\r\n")
    except asyncio.CancelledError:
        raise
    except ConnectionError:
        return  # lost connection: connection_lost() already told the reader
    except Exception as error:
        conn.body_failed(error)
