"""The proxies' lean listener, spoken to with raw bytes over loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from reference.drain import DrainController
from reference.http_listener import ProxyListener, ProxyRequest, drain_aware_fast


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


# ----- the fast handler ------------------------------------------------------------------------


def recorder(calls: list[str]) -> Callable[[ProxyRequest], Awaitable[web.StreamResponse]]:
    """A handler that notes each request it serves."""

    async def handler(request: ProxyRequest) -> web.StreamResponse:
        calls.append(request.raw_path)
        return web.Response(text=f"handler {request.method} {request.raw_path}")

    return handler


def answer_now(taken: list[str], fields: bytes = b"Via: 1.1 sidecarlab\r\nX-Lane: fast\r\n"):
    """A fast handler that answers every request it is offered, before it returns."""

    def fast(request: ProxyRequest) -> bool:
        taken.append(request.raw_path)
        request.respond(200, "OK", fields, f"fast {request.method} {request.raw_path}".encode())
        return True

    return fast


async def read_response(reader: asyncio.StreamReader, *, body: bool = True) -> tuple[bytes, bytes]:
    """One response's head and its Content-Length body."""
    async with asyncio.timeout(3):
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
        return head, (await reader.readexactly(length) if body else b"")


def field_lines(head: bytes) -> list[bytes]:
    return head.split(b"\r\n")[1:-2]


async def test_a_fast_handler_answers_at_once_and_the_handler_is_never_called(listen):
    calls: list[str] = []
    taken: list[str] = []
    _, port = await listen(recorder(calls), fast=answer_now(taken))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and body == b"fast GET /a"
        lines = field_lines(head)
        # The given fields first, as given; the listener adds only what was missing.
        assert lines[:3] == [b"Via: 1.1 sidecarlab", b"X-Lane: fast", b"Content-Length: 11"]
        assert lines[3].startswith(b"Date: ") and lines[3].endswith(b" GMT")
        assert len(lines) == 4  # no Connection field: HTTP/1.1 keeps the connection open
        # Kept alive: a second request on the same connection is answered too.
        writer.write(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[1] == b"fast GET /b"
    finally:
        writer.close()
    assert taken == ["/a", "/b"] and calls == []


async def test_framing_fields_the_fast_handler_gave_are_not_added_twice_whatever_their_case(
    listen,
):
    def fast(request: ProxyRequest) -> bool:
        request.respond(200, "OK", b"content-length: 4\r\nDATE: Thu, 01 Jan 2026 00:00:00 GMT\r\n",
                        b"four")
        return True

    _, port = await listen(fast=fast)
    data = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.lower().count(b"content-length") == 1 and data.lower().count(b"date") == 1
    assert b"DATE: Thu, 01 Jan 2026 00:00:00 GMT\r\n" in data and data.endswith(b"\r\n\r\nfour")


async def test_a_field_that_only_mentions_content_length_does_not_stop_it_being_added(listen):
    # Only a field named Content-Length counts: not one whose name or value contains it.
    fields = b"X-Content-Length: 99\r\nX-Note: content-length: none\r\n"
    _, port = await listen(fast=answer_now([], fields))
    data = await exchange(port, b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert b"\r\nContent-Length: 11\r\n" in data and data.endswith(b"fast GET /x")


async def test_a_request_the_fast_handler_declines_is_served_by_the_handler(listen):
    calls: list[str] = []
    offered: list[str] = []

    def decline(request: ProxyRequest) -> bool:
        offered.append(request.raw_path)
        return False

    _, port = await listen(recorder(calls), fast=decline)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for path in (b"/a", b"/b"):  # one at a time: each is offered to the fast handler
            writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
            assert (await read_response(reader))[1] == b"handler GET " + path
    finally:
        writer.close()
    assert offered == ["/a", "/b"] and calls == ["/a", "/b"]


async def test_requests_with_a_body_or_an_expect_field_never_reach_the_fast_handler(listen):
    calls: list[str] = []
    taken: list[str] = []
    _, port = await listen(recorder(calls), fast=answer_now(taken))
    # One request at a time, so each is alone in the queue when it is served.
    for request in (b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close"
                    b"\r\n\r\nhi",
                    b"GET /expect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                    b"Connection: close\r\n\r\n"):
        data = await exchange(port, request)
        assert b"handler " in data
    assert taken == [] and calls == ["/body", "/expect"]


async def test_a_fast_handler_that_raises_gets_the_client_a_500_and_the_connection_closes(listen):
    calls: list[str] = []

    def broken(request: ProxyRequest) -> bool:
        raise RuntimeError("bug")

    _, port = await listen(recorder(calls), fast=broken)
    # A kept-alive request, yet the connection closes: what the handler did is unknown.
    data = await exchange(port, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert data.endswith(b"internal error in the proxy\n")
    # The fast handler may have forwarded the request before it failed: never served twice.
    assert calls == []


async def test_the_500_for_a_failing_fast_handler_says_the_connection_closes(listen):
    def broken(request: ProxyRequest) -> bool:
        raise RuntimeError("bug")

    _, port = await listen(fast=broken)
    data = await exchange(port, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    # A client that sees no Connection: close may send its next request into a closing socket.
    assert b"\r\nConnection: close\r\n" in data


async def test_continue_with_serves_the_awaitables_answer_as_a_handlers(listen):
    calls: list[str] = []

    async def answer(path: str) -> web.StreamResponse:
        await asyncio.sleep(0)
        return web.Response(text=f"continued {path}", headers={"X-Lane": "continued"})

    def hand_over(request: ProxyRequest) -> bool:
        request.continue_with(answer(request.raw_path))
        return True

    _, port = await listen(recorder(calls), fast=hand_over)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for path in (b"/a", b"/b"):  # kept alive after a continued answer too
            writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
            head, body = await read_response(reader)
            assert b"X-Lane: continued" in head and body == b"continued " + path
    finally:
        writer.close()
    assert calls == []


async def test_an_answer_given_later_from_a_callback_reaches_the_client(listen):
    def later(request: ProxyRequest) -> bool:
        asyncio.get_running_loop().call_later(
            0.05, request.respond, 202, "Accepted", b"X-Later: yes\r\n", b"in a while")
        return True

    _, port = await listen(fast=later)
    data = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 202 Accepted\r\nX-Later: yes\r\n")
    assert data.endswith(b"\r\n\r\nin a while")


async def test_pipelined_requests_behind_a_fast_one_wait_and_are_answered_in_order(listen):
    calls: list[str] = []
    pending: list[ProxyRequest] = []
    taken = asyncio.Event()

    def hold(request: ProxyRequest) -> bool:
        pending.append(request)
        taken.set()
        return True

    _, port = await listen(recorder(calls), fast=hold)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(taken.wait(), 3)
        writer.write(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n"
                     b"GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await asyncio.sleep(0.05)  # time for them to arrive, and to be served if they jumped ahead
        assert calls == []
        pending[0].respond(200, "OK", b"", b"fast /first")
        async with asyncio.timeout(3):
            data = await reader.read()
    finally:
        writer.close()
    assert data.index(b"fast /first") < data.index(b"handler GET /second") < data.index(
        b"handler GET /third")
    assert len(pending) == 1 and calls == ["/second", "/third"]


async def test_a_request_with_connection_close_gets_it_back_and_the_socket_closes(listen):
    _, port = await listen(fast=answer_now([]))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head, body = await read_response(reader)
        assert b"\r\nConnection: close\r\n" in head and body == b"fast GET /"
        async with asyncio.timeout(3):
            assert await reader.read() == b""  # closed by the listener, not by us
    finally:
        writer.close()


async def test_an_http_1_0_client_asking_for_keep_alive_is_told_it_is_kept(listen):
    _, port = await listen(fast=answer_now([]))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        head, body = await read_response(reader)
        # An HTTP/1.0 client closes unless told otherwise.
        assert b"\r\nConnection: keep-alive\r\n" in head and body == b"fast GET /a"
        writer.write(b"GET /b HTTP/1.0\r\n\r\n")  # without keep-alive this time
        head, body = await read_response(reader)
        assert b"\r\nConnection: close\r\n" in head and body == b"fast GET /b"
    finally:
        writer.close()


async def test_head_and_204_fast_answers_carry_no_body(listen):
    def fast(request: ProxyRequest) -> bool:
        if request.method == "HEAD":
            request.respond(200, "OK", b"Content-Length: 5\r\n", b"hello")
        else:
            request.respond(204, "No Content", b"", b"")
        return True

    _, port = await listen(fast=fast)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _ = await read_response(reader, body=False)
        # The length a GET would have had, with no body behind it.
        assert b"\r\nContent-Length: 5\r\n" in head
        writer.write(b"DELETE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        async with asyncio.timeout(3):
            rest = await reader.read()
    finally:
        writer.close()
    # Had the body followed the HEAD answer, "hello" would stand before the next status line.
    assert rest.startswith(b"HTTP/1.1 204 No Content\r\n") and rest.endswith(b"\r\n\r\n")
    assert b"Content-Length" not in rest


async def test_cleanup_lets_a_fast_request_in_flight_finish_first(listen):
    taken = asyncio.Event()

    def slow(request: ProxyRequest) -> bool:
        asyncio.get_running_loop().call_later(0.2, request.respond, 200, "OK", b"", b"finished")
        taken.set()
        return True

    listener, port = await listen(fast=slow, shutdown_timeout=2.0)
    answer = asyncio.create_task(exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    await asyncio.wait_for(taken.wait(), 3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await listener.cleanup()
    assert loop.time() - started > 0.1  # it did wait
    data = await answer
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"finished")
    assert b"\r\nConnection: close\r\n" in data  # the listener is closing


async def test_cleanup_gives_up_on_a_fast_request_after_the_shutdown_timeout(listen):
    taken = asyncio.Event()

    def never(request: ProxyRequest) -> bool:
        taken.set()
        return True

    listener, port = await listen(fast=never, shutdown_timeout=0.1)
    answer = asyncio.create_task(exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    await asyncio.wait_for(taken.wait(), 3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await listener.cleanup()
    assert loop.time() - started < 1
    assert await answer == b""  # cut off without an answer


async def test_cleanup_waits_for_a_fast_request_handed_over_while_it_waits(listen):
    taken = asyncio.Event()

    async def answer() -> web.StreamResponse:
        await asyncio.sleep(0.1)
        return web.Response(text="finished")

    def hand_over_later(request: ProxyRequest) -> bool:
        # As the proxy's fast lane does when the upstream's answer needs the slow lane.
        asyncio.get_running_loop().call_later(0.05, request.continue_with, answer())
        taken.set()
        return True

    listener, port = await listen(fast=hand_over_later, shutdown_timeout=2.0)
    answered = asyncio.create_task(exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    await asyncio.wait_for(taken.wait(), 3)
    await listener.cleanup()
    data = await answered
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"finished")


async def test_a_request_is_answered_only_once(listen):
    errors: list[str] = []

    def twice(request: ProxyRequest) -> bool:
        request.respond(200, "OK", b"", b"first")
        try:
            request.respond(200, "OK", b"", b"second")
        except RuntimeError as error:
            errors.append(str(error))
        third = asyncio.sleep(0, web.Response(text="third"))
        try:
            request.continue_with(third)
        except RuntimeError as error:
            errors.append(str(error))
            third.close()  # refused, so never awaited
        return True

    _, port = await listen(fast=twice)
    data = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert data.endswith(b"\r\n\r\nfirst") and data.count(b"HTTP/1.1 ") == 1
    assert errors == ["this request was answered already"] * 2


async def test_a_drain_aware_fast_handler_takes_nothing_once_the_drain_started(listen):
    drain = DrainController(delay=0, grace=0)
    calls: list[str] = []
    taken: list[str] = []
    _, port = await listen(recorder(calls), fast=drain_aware_fast(drain, answer_now(taken)))
    assert (await exchange(port, b"GET /before HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            ).endswith(b"fast GET /before")
    drain.start_drain()
    assert (await exchange(port, b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            ).endswith(b"handler GET /after")
    assert taken == ["/before"] and calls == ["/after"]


async def test_unparsable_bytes_behind_a_request_in_flight_get_their_400_after_its_answer(listen):
    release = asyncio.Event()
    entered = asyncio.Event()

    async def slow(request: ProxyRequest) -> web.StreamResponse:
        entered.set()
        await release.wait()
        return web.Response(text=f"slow {request.raw_path}")

    _, port = await listen(slow)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(entered.wait(), 3)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await asyncio.sleep(0.05)  # parsed, and rejected, while /first is still being served
        release.set()
        async with asyncio.timeout(3):
            data = await reader.read()
    finally:
        writer.close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.index(b"slow /first") < data.index(b"HTTP/1.1 400 ")
    assert data.count(b"Connection: close") == 1  # the 400's, which ends the connection


async def test_requests_pipelined_before_unparsable_bytes_are_all_answered_first(listen):
    taken: list[str] = []
    pending: list[ProxyRequest] = []

    def hold_first(request: ProxyRequest) -> bool:
        if not pending:
            pending.append(request)
            return True
        return answer_now(taken)(request)

    calls: list[str] = []
    _, port = await listen(recorder(calls), fast=hold_first)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.05)
        writer.write(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.sleep(0.05)
        # Apart, in a read of their own: the parser drops a read's requests if it fails on it.
        writer.write(b"\x00\x01 garbage\r\n\r\n")
        await asyncio.sleep(0.05)
        pending[0].respond(200, "OK", b"", b"fast /first")
        async with asyncio.timeout(3):
            data = await reader.read()
    finally:
        writer.close()
    assert len(pending) == 1
    assert data.index(b"fast /first") < data.index(b"/second") < data.index(b"HTTP/1.1 400 ")
