"""UpstreamPool against real aiohttp servers and raw sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from reference.runtime import event_loop_factory
from reference.upstream_pool import (
    RequestBodyError,
    UpstreamConnectError,
    UpstreamDisconnected,
    UpstreamError,
    UpstreamPool,
    UpstreamProtocolError,
    UpstreamResponse,
    UpstreamTimeout,
)

HOST = "127.0.0.1"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool()
    yield pool
    await pool.close()


@pytest.fixture
async def aiohttp_upstream() -> AsyncIterator[Callable[[web.Application], Awaitable[int]]]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, HOST, 0).start()
        return runner.addresses[0][1]

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> int:
        server = await asyncio.start_server(handler, HOST, 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.close()
        # Connections the handlers still hold are closed by the handlers' own end.
    await asyncio.sleep(0)


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def answering(*responses: bytes, close: bool = False, delays: tuple[float, ...] = (),
              seen: list[bytes] | None = None) -> Handler:
    """A raw server that answers each request on a connection with the next response.

    `seen`, if given, receives every request head the server read.
    """

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for index, response in enumerate(responses):
                head = await read_head(reader)
                if seen is not None:
                    seen.append(head)
                if index < len(delays):
                    await asyncio.sleep(delays[index])  # the Nth answer comes after delays[N] s
                writer.write(response)
                await writer.drain()
            if close:
                return
            await reader.read()  # keep the connection open until the client closes it
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handler


async def get(pool: UpstreamPool, port: int, method: str = "GET", **kwargs) -> tuple[int, bytes]:
    response = await pool.request(HOST, port, method, "/", [("Host", "up")], **kwargs)
    try:
        return response.status, await response.read()
    finally:
        response.release()


# ----- framing -------------------------------------------------------------------------------


async def test_a_content_length_body_is_read_and_the_connection_reused(pool, raw_upstream):
    port = await raw_upstream(answering(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nbye",
    ))
    assert await get(pool, port) == (200, b"hello")
    assert pool.idle_count(HOST, port) == 1
    assert await get(pool, port) == (201, b"bye")
    assert pool.connections_made == 1


async def test_a_chunked_body_is_decoded_and_streams_chunk_by_chunk(pool, raw_upstream):
    gate = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await gate.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await reader.read()
        writer.close()

    port = await raw_upstream(handler)
    response = await pool.request(HOST, port, "GET", "/", [("Host", "up")])
    assert response.content_length is None
    # The first chunk is readable while the upstream still holds the second one back.
    assert await asyncio.wait_for(response.content.readany(), 2) == b"first"
    gate.set()
    assert await response.read() == b"second"
    response.release()
    assert pool.idle_count(HOST, port) == 1


async def test_a_close_delimited_body_ends_at_eof_and_is_not_reused(pool, raw_upstream):
    port = await raw_upstream(answering(b"HTTP/1.1 200 OK\r\n\r\nuntil the end", close=True))
    assert await get(pool, port) == (200, b"until the end")
    assert pool.idle_count(HOST, port) == 0


async def test_head_204_and_304_have_no_body_even_with_a_content_length(pool, raw_upstream):
    port = await raw_upstream(answering(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ))
    response = await pool.request(HOST, port, "HEAD", "/", [("Host", "up")])
    assert (response.status, response.content_length, await response.read()) == (200, 10, b"")
    response.release()
    assert await get(pool, port) == (204, b"")
    assert await get(pool, port) == (304, b"")
    # Still in step: the fourth answer is read as the fourth response, on the same connection.
    assert await get(pool, port) == (200, b"ok")
    assert pool.connections_made == 1


async def test_interim_100_continue_is_skipped(pool, raw_upstream):
    port = await raw_upstream(answering(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    assert await get(pool, port) == (200, b"ok")


async def test_connection_close_in_the_response_prevents_reuse(pool, raw_upstream):
    port = await raw_upstream(answering(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"))
    assert await get(pool, port) == (200, b"ok")
    assert pool.idle_count(HOST, port) == 0


async def test_a_response_released_before_its_end_closes_the_connection(pool, raw_upstream):
    port = await raw_upstream(answering(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"))
    response = await pool.request(HOST, port, "GET", "/", [("Host", "up")])
    response.release()
    assert pool.idle_count(HOST, port) == 0


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 abc OK\r\n\r\n",
    b"NOT HTTP AT ALL\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nBad Header Name: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70_000 + b"\r\n\r\n",
])
async def test_a_malformed_response_is_rejected(pool, raw_upstream, answer):
    port = await raw_upstream(answering(answer))
    with pytest.raises(UpstreamProtocolError) as caught:
        await get(pool, port)
    assert caught.value.received
    assert pool.idle_count(HOST, port) == 0


async def test_a_body_cut_short_of_its_content_length_raises_on_read(pool, raw_upstream):
    port = await raw_upstream(answering(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", close=True))
    response = await pool.request(HOST, port, "GET", "/", [("Host", "up")])
    with pytest.raises(UpstreamDisconnected):
        await response.read()
    response.release()


# ----- requests ------------------------------------------------------------------------------


async def test_request_bodies_go_out_with_content_length_or_chunked(pool, aiohttp_upstream):
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        framing = "chunked" if request.headers.get("Transfer-Encoding") else "length"
        return web.Response(text=f"{framing}:{body.decode()}")

    app = web.Application()
    app.router.add_route("*", "/", echo)
    port = await aiohttp_upstream(app)

    async def streamed() -> AsyncIterator[bytes]:
        yield b"one,"
        yield b"two"

    assert await get(pool, port, "POST", body=b"bytes") == (200, b"length:bytes")
    assert await get(pool, port, "POST", body=streamed()) == (200, b"chunked:one,two")
    response = await pool.request(HOST, port, "PUT", "/", [("Host", "up"), ("Content-Length", "7")],
                                  streamed())
    assert await response.read() == b"length:one,two"
    response.release()
    assert await get(pool, port, "POST") == (200, b"length:")
    assert pool.connections_made == 1


async def test_header_injection_is_refused_before_anything_is_sent(pool, raw_upstream):
    port = await raw_upstream(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
    for headers in ([("X-A", "1\r\nX-Evil: 1")], [("X-A\n", "1")]):
        with pytest.raises(ValueError):
            await pool.request(HOST, port, "GET", "/", headers)
    with pytest.raises(ValueError):
        await pool.request(HOST, port, "GET", "/ HTTP/1.1\r\nX: y", [])
    assert pool.connections_made == 0


async def test_a_failing_request_body_aborts_the_upstream_connection(pool, raw_upstream):
    seen = asyncio.get_running_loop().create_future()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        seen.set_result(await reader.read())  # everything up to the abort
        writer.close()

    port = await raw_upstream(handler)

    async def broken() -> AsyncIterator[bytes]:
        yield b"part"
        raise OSError("client went away")

    with pytest.raises(RequestBodyError) as caught:
        await get(pool, port, "POST", body=broken())
    assert isinstance(caught.value.__cause__, OSError)
    # The upstream never sees the terminating zero chunk: the request is visibly incomplete.
    assert not (await asyncio.wait_for(seen, 2)).endswith(b"0\r\n\r\n")


# ----- stale connections and retry safety -------------------------------------------------------


async def test_a_connection_the_upstream_closed_while_idle_is_not_reused(pool, raw_upstream):
    port = await raw_upstream(answering(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", close=True))
    assert await get(pool, port) == (200, b"ok")
    await asyncio.sleep(0.05)  # the FIN arrives; the pool notices before the next request
    assert pool.idle_count(HOST, port) == 0
    assert await get(pool, port) == (200, b"ok")
    assert pool.connections_made == 2


def close_after_request(first: bytes) -> Handler:
    """First connection: answer once, then close silently on the next request (the race)."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            await read_head(reader)
            writer.write(first)
            await writer.drain()
            if connections == 1:
                await read_head(reader)  # the request arrives, then the connection dies
                return
            await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return handler


async def test_an_idempotent_request_on_a_stale_connection_is_retried_once_on_a_new_one(
    pool, raw_upstream
):
    port = await raw_upstream(close_after_request(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    assert await get(pool, port) == (200, b"ok")
    assert await get(pool, port) == (200, b"ok")
    assert pool.connections_made == 2


async def test_a_post_on_a_stale_connection_is_not_retried_and_says_it_was_sent(
    pool, raw_upstream
):
    port = await raw_upstream(close_after_request(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    assert await get(pool, port) == (200, b"ok")
    with pytest.raises(UpstreamDisconnected) as caught:
        await get(pool, port, "POST", body=b"order=1")
    assert caught.value.sent and not caught.value.received
    assert pool.connections_made == 1


async def test_a_refused_connection_says_nothing_was_sent(pool):
    # Port 9 (discard) is closed on loopback in test environments: connecting is refused.
    with pytest.raises(UpstreamConnectError) as caught:
        await pool.request(HOST, 9, "POST", "/", [("Host", "up")], b"x")
    assert not caught.value.sent and not caught.value.received


# ----- timeouts and limits -----------------------------------------------------------------------


async def test_an_upstream_that_never_answers_times_out(pool, raw_upstream):
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    port = await raw_upstream(silent)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeout) as caught:
        await get(pool, port, timeout=0.2)
    assert isinstance(caught.value, TimeoutError) and not caught.value.received
    # Wide bound for a loaded machine; the point is that it does not wait forever.
    assert 0.15 < loop.time() - started < 2


async def test_the_timeout_also_covers_a_body_that_stalls(pool, raw_upstream):
    port = await raw_upstream(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))
    response = await pool.request(HOST, port, "GET", "/", [("Host", "up")], timeout=0.2)
    with pytest.raises(UpstreamTimeout):
        await response.read()
    response.release()
    assert pool.idle_count(HOST, port) == 0


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


async def test_a_shorter_timeout_on_a_reused_connection_still_fires_on_time(pool, raw_upstream):
    port = await raw_upstream(answering(OK, OK, delays=(0, 5)))
    assert await get(pool, port, timeout=10) == (200, b"ok")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeout):
        await get(pool, port, timeout=0.2)
    # The first exchange left a timer 10 s out; the second one's 0.2 s must win. Wide bound
    # for a loaded machine.
    assert 0.15 < loop.time() - started < 2
    assert pool.connections_made == 1


async def test_a_longer_timeout_on_a_reused_connection_is_not_cut_short(pool, raw_upstream):
    port = await raw_upstream(answering(OK, OK, delays=(0, 0.5)))
    assert await get(pool, port, timeout=0.2) == (200, b"ok")
    # The first exchange's timer fires 0.2 s in, while the second one is still waiting: it
    # must move on to the second one's deadline instead of timing it out.
    assert await get(pool, port, timeout=5) == (200, b"ok")
    assert pool.connections_made == 1


async def test_connecting_is_bounded_by_connect_timeout():
    # A listener that never accepts, with its backlog full: the kernel drops further SYNs,
    # so the next connect hangs, as it would towards a host that is down.
    listener = socket.socket()
    listener.bind((HOST, 0))
    listener.listen(0)
    fillers = []
    pool = UpstreamPool(connect_timeout=0.2)
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)
        with pytest.raises(UpstreamTimeout) as caught:
            await pool.request(HOST, listener.getsockname()[1], "GET", "/", [("Host", "x")])
        assert not caught.value.sent
    finally:
        await pool.close()
        for filler in fillers:
            filler.close()
        listener.close()


async def test_idle_connections_are_bounded_per_endpoint_and_expire(raw_upstream):
    pool = UpstreamPool(max_idle_per_endpoint=2, idle_timeout=0.1)
    try:
        port = await raw_upstream(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
        responses = await asyncio.gather(*(
            pool.request(HOST, port, "GET", "/", [("Host", "up")]) for _ in range(4)))
        for response in responses:
            await response.read()
            response.release()
        assert pool.idle_count(HOST, port) == 2
        await asyncio.sleep(0.3)  # two sweeps of idle_timeout / 2
        assert pool.idle_count(HOST, port) == 0
    finally:
        await pool.close()


async def test_errors_share_one_base_class_for_callers_that_do_not_care_which():
    assert all(issubclass(cls, UpstreamError) for cls in (
        UpstreamConnectError, UpstreamDisconnected, UpstreamProtocolError, UpstreamTimeout,
        RequestBodyError))


class _ResetOnAccept(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_an_upstream_that_resets_each_new_connection_is_reported_as_disconnected(loop_name):
    # On uvloop the reset reaches the connection before the request is written: the pool
    # must report that, not trip over a connection without a transport.
    if loop_name == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed for this Python")

    async def attempt() -> list[UpstreamDisconnected]:
        server = await asyncio.get_running_loop().create_server(_ResetOnAccept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = UpstreamPool()
        errors = []
        try:
            for _ in range(20):
                with pytest.raises(UpstreamDisconnected) as caught:
                    await pool.request("127.0.0.1", port, "GET", "/", [("Host", "x")], timeout=2)
                errors.append(caught.value)
        finally:
            server.close()
            await pool.close()
        return errors

    with asyncio.Runner(loop_factory=event_loop_factory(loop_name)) as runner:
        errors = runner.run(attempt())
    assert len(errors) == 20 and not any(error.received for error in errors)


# ----- send_nowait: the fast lane's exchange, by callback --------------------------------------


class Results:
    """A send_nowait callback that keeps what it was called with, and whether the body was whole."""

    def __init__(self) -> None:
        self.calls: list[object] = []
        self.body_whole_at_call: bool | None = None
        self.arrived = asyncio.get_running_loop().create_future()

    def __call__(self, result: object) -> None:
        self.calls.append(result)
        if isinstance(result, UpstreamResponse):
            self.body_whole_at_call = result.content.is_eof()
        if not self.arrived.done():
            self.arrived.set_result(result)

    async def result(self) -> object:
        return await asyncio.wait_for(self.arrived, 2)


GET_HEAD = b"GET /next HTTP/1.1\r\nHost: up\r\n\r\n"


async def test_send_nowait_without_an_idle_connection_sends_nothing_and_says_so(pool, raw_upstream):
    connected = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.append(await reader.read())
        writer.close()

    port = await raw_upstream(handler)
    results = Results()
    assert pool.send_nowait(HOST, port, "GET", GET_HEAD, results) is False
    await asyncio.sleep(0.05)  # time for a connection the pool should not have made to show up
    assert connected == [] and pool.connections_made == 0
    assert results.calls == []


async def test_send_nowait_does_not_use_a_connection_the_upstream_closed_while_idle(
    pool, raw_upstream
):
    port = await raw_upstream(answering(OK, close=True))
    assert await get(pool, port) == (200, b"ok")
    await asyncio.sleep(0.05)  # the FIN arrives while the connection waits in the pool
    results = Results()
    assert pool.send_nowait(HOST, port, "GET", GET_HEAD, results) is False
    assert results.calls == []


async def test_send_nowait_calls_back_with_a_whole_small_response_and_the_connection_is_reused(
    pool, raw_upstream
):
    seen: list[bytes] = []
    port = await raw_upstream(answering(OK, b"HTTP/1.1 201 Created\r\nX-Up: 1\r\n"
                                            b"Content-Length: 5\r\n\r\nhello", seen=seen))
    assert await get(pool, port) == (200, b"ok")
    results = Results()
    assert pool.send_nowait(HOST, port, "GET", GET_HEAD, results, timeout=2) is True
    response = await results.result()
    assert isinstance(response, UpstreamResponse)
    assert (response.status, response.reason, response.headers["X-Up"]) == (201, "Created", "1")
    # Called from data_received once the whole chunk was parsed: the body that came with the
    # head is complete already, so a proxy can answer its client in that same pass.
    assert results.body_whole_at_call is True
    assert await response.read() == b"hello"
    assert seen[1] == GET_HEAD  # the head went out exactly as given
    assert pool.idle_count(HOST, port) == 0  # in use until released
    response.release()
    assert pool.idle_count(HOST, port) == 1
    assert pool.connections_made == 1
    assert len(results.calls) == 1


async def test_send_nowait_frames_the_answer_to_head_without_a_body(pool, raw_upstream):
    port = await raw_upstream(answering(
        OK,
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext",
    ))
    assert await get(pool, port) == (200, b"ok")
    results = Results()
    assert pool.send_nowait(HOST, port, "HEAD", b"HEAD / HTTP/1.1\r\nHost: up\r\n\r\n", results)
    response = await results.result()
    assert isinstance(response, UpstreamResponse)
    assert (response.content_length, await response.read()) == (10, b"")
    response.release()
    # Had the parser waited for 10 body bytes, it would take the next answer for them.
    assert await get(pool, port) == (200, b"next")
    assert pool.connections_made == 1


async def test_send_nowait_reports_the_keep_alive_race_as_none_for_a_get(pool, raw_upstream):
    port = await raw_upstream(close_after_request(OK))
    assert await get(pool, port) == (200, b"ok")
    results = Results()
    assert pool.send_nowait(HOST, port, "GET", GET_HEAD, results) is True
    assert await results.result() is None  # nothing came back: the caller sends it again
    assert pool.idle_count(HOST, port) == 0
    assert results.calls == [None]


async def test_send_nowait_reports_the_keep_alive_race_as_an_error_for_a_post(pool, raw_upstream):
    port = await raw_upstream(close_after_request(OK))
    assert await get(pool, port) == (200, b"ok")
    results = Results()
    head = b"POST /orders HTTP/1.1\r\nHost: up\r\nContent-Length: 0\r\n\r\n"
    assert pool.send_nowait(HOST, port, "POST", head, results) is True
    error = await results.result()
    # The upstream may have acted on it: a POST is never sent twice, so the race is an error.
    assert isinstance(error, UpstreamDisconnected)
    assert error.sent and not error.received
    assert pool.idle_count(HOST, port) == 0


async def test_send_nowait_reports_a_get_broken_off_mid_answer_as_an_error_not_the_race(
    pool, raw_upstream
):
    async def half_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(OK)
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-")  # then the connection dies
        await writer.drain()
        writer.close()

    port = await raw_upstream(half_answer)
    assert await get(pool, port) == (200, b"ok")
    results = Results()
    assert pool.send_nowait(HOST, port, "GET", GET_HEAD, results) is True
    error = await results.result()
    # Answer bytes arrived, so the upstream saw the request: not safe to send it again blindly.
    assert isinstance(error, UpstreamDisconnected) and error.received


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_send_nowait_times_out_a_slow_upstream(pool, raw_upstream, method):
    # Answers the first request; reads the second and holds it until the client leaves.
    port = await raw_upstream(answering(OK))
    assert await get(pool, port) == (200, b"ok")
    results = Results()
    loop = asyncio.get_running_loop()
    started = loop.time()
    head = f"{method} /slow HTTP/1.1\r\nHost: up\r\nContent-Length: 0\r\n\r\n".encode()
    assert pool.send_nowait(HOST, port, method, head, results, timeout=0.1) is True
    error = await results.result()
    # The connection did not break: the upstream is slow. That is no reason to send again.
    assert isinstance(error, UpstreamTimeout) and not error.received
    # Wide bound for a loaded machine; the point is that it does not wait for the answer.
    assert 0.05 < loop.time() - started < 1
    assert pool.idle_count(HOST, port) == 0
    assert len(results.calls) == 1
