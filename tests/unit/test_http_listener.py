"""The proxies' lean listener, spoken to with raw bytes over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from reference.http_listener import ProxyListener, ProxyRequest


async def echo(request: ProxyRequest) -> web.StreamResponse:
    body = await request.content.read() if request.body_exists else b""
    return web.Response(text=f"{request.method} {request.raw_path} {len(body)}",
                        headers={"X-Remote": request.remote or "?"})


@pytest.fixture
async def listen() -> AsyncIterator[Callable[..., Awaitable[tuple[ProxyListener, int]]]]:
    started: list[ProxyListener] = []

    async def start(handler=echo, **options) -> tuple[ProxyListener, int]:
        listener = ProxyListener(handler, **options)
        started.append(listener)
        return listener, await listener.start("127.0.0.1", 0)

    yield start
    for listener in started:
        await listener.close()


async def exchange(port: int, data: bytes, *, until_close: bool = True, timeout: float = 3.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            if until_close:
                return await reader.read()
            return await reader.readuntil(b"\r\n\r\n") + await reader.read(200)
    finally:
        writer.close()


async def test_keep_alive_requests_on_one_connection_are_answered_in_order(listen):
    _, port = await listen()
    data = await exchange(port, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                                b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                                b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.index(b"GET /a 0") < data.index(b"POST /b 3") < data.index(b"GET /c 0")
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert data.rstrip().endswith(b"GET /c 0")
    assert b"X-Remote: 127.0.0.1" in data
    assert data.count(b"Connection: close") == 1  # only the last one, which asked for it


async def test_an_http_1_0_request_is_answered_and_the_connection_closed(listen):
    _, port = await listen()
    data = await exchange(port, b"GET /old HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in data
    assert data.endswith(b"GET /old 0")


async def test_bytes_that_are_not_http_get_400_and_the_connection_closes(listen):
    _, port = await listen()
    data = await exchange(port, b"NOT HTTP AT ALL\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 ") and b"Connection: close" in data


async def test_a_protocol_upgrade_is_refused_with_501(listen):
    _, port = await listen()
    data = await exchange(port, b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
                                b"Upgrade: websocket\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 501 ")


async def test_expect_100_continue_gets_its_interim_answer_before_the_body_is_sent(listen):
    _, port = await listen()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        async with asyncio.timeout(3):
            assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            writer.write(b"ok")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK")
            assert await reader.readexactly(8) == b"PUT /up "
    finally:
        writer.close()


async def test_a_failing_handler_gets_the_client_a_500_not_a_hang(listen):
    async def broken(request: ProxyRequest) -> web.StreamResponse:
        raise RuntimeError("bug")

    _, port = await listen(broken)
    data = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 500 ")


async def test_head_and_204_answers_carry_no_body(listen):
    async def handler(request: ProxyRequest) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(body=b"", headers={"Content-Length": "1234"})
        return web.Response(status=204)

    _, port = await listen(handler)
    data = await exchange(port, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
                                b"DELETE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, rest = data.split(b"\r\n\r\n", 1)
    assert b"Content-Length: 1234" in head
    assert rest.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"Content-Length" not in rest and rest.endswith(b"\r\n\r\n")


async def test_a_streamed_response_goes_out_through_aiohttps_writer(listen):
    async def streamed(request: ProxyRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)  # type: ignore[arg-type]
        for part in (b"one ", b"two"):
            await response.write(part)
        return response  # write_eof() is left to the listener

    _, port = await listen(streamed)
    data = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in data
    assert data.endswith(b"4\r\none \r\n3\r\ntwo\r\n0\r\n\r\n")


async def test_an_unread_request_body_closes_the_connection_after_the_answer(listen):
    async def ignore_body(request: ProxyRequest) -> web.StreamResponse:
        return web.Response(text="no thanks")

    _, port = await listen(ignore_body)
    data = await exchange(port, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                b"5\r\nhello\r\n")  # the body has not ended
    assert data.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in data


async def test_stop_accepting_refuses_new_connections_and_closes_idle_ones(listen):
    listener, port = await listen()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"GET / 0")
    await listener.stop_accepting()
    async with asyncio.timeout(3):
        assert await reader.read() == b""  # the idle keep-alive connection was closed
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_cleanup_lets_a_request_in_flight_finish_first(listen):
    started = asyncio.Event()

    async def slow(request: ProxyRequest) -> web.StreamResponse:
        started.set()
        await asyncio.sleep(0.2)
        return web.Response(text="finished")

    listener, port = await listen(slow, shutdown_timeout=2.0)
    answer = asyncio.create_task(exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    await started.wait()
    await listener.cleanup()
    data = await answer
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"finished")


async def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(listen):
    _, port = await listen(keep_alive_timeout=0.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"GET / 0")
    async with asyncio.timeout(2):
        assert await reader.read() == b""
    writer.close()
