"""What crosses the sidecar: headers, framing, body limits and streaming, checked on the wire."""

from __future__ import annotations

import asyncio
import re

import aiohttp
import pytest
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "transfer-encoding", "upgrade"}


async def raw_exchange(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    """Send `data` as is on a new connection; return everything read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read()  # until EOF: a framing error must close the connection
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def test_hop_by_hop_and_connection_named_fields_are_not_forwarded_either_way(proxied):
    async def hop_heavy(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={
            "Connection": "X-Secret-Out", "X-Secret-Out": "internal", "Keep-Alive": "timeout=5",
            "Proxy-Connection": "keep-alive", "X-Kept": "yes",
        })

    sidecar, v1, app = await proxied(hop_heavy)
    sent = {"Connection": "keep-alive, X-Secret-In", "X-Secret-In": "smuggled", "TE": "trailers",
            "Keep-Alive": "timeout=9", "Proxy-Connection": "keep-alive", "Upgrade": "h2c",
            "X-End-To-End": "kept"}
    for base, target in ((sidecar.outbound, v1), (sidecar.inbound, app)):
        async with sidecar.session.get(f"{base}/", headers={"Host": "reviews", **sent}) as r:
            assert r.status == 200
            got = {name.lower() for name in r.headers}
            assert "x-secret-out" not in got and "keep-alive" not in got
            assert "proxy-connection" not in got
            assert r.headers["X-Kept"] == "yes"
            assert r.headers["Via"] == "1.1 sidecarlab"
        received = {name.lower(): value for name, value in target.seen[-1].headers}
        assert not (HOP_BY_HOP | {"x-secret-in"}) & set(received) - {"connection"}
        # aiohttp's client writes its own `Connection` for the upstream hop, never the client's.
        assert "x-secret-in" not in received.get("connection", "").lower()
        assert received["x-end-to-end"] == "kept"
        assert received["via"] == "1.1 sidecarlab"


async def test_x_forwarded_for_is_appended_inbound_and_left_alone_outbound(proxied):
    sidecar, v1, app = await proxied()
    headers = {"Host": "reviews", "X-Forwarded-For": "203.0.113.7"}
    async with sidecar.session.get(f"{sidecar.inbound}/", headers=headers):
        pass
    async with sidecar.session.get(f"{sidecar.outbound}/", headers=headers):
        pass
    inbound = [value for name, value in app.seen[-1].headers if name.lower() == "x-forwarded-for"]
    outbound = [value for name, value in v1.seen[-1].headers if name.lower() == "x-forwarded-for"]
    assert inbound == ["203.0.113.7, 127.0.0.1"]
    assert outbound == ["203.0.113.7"]


SMUGGLING = {
    "te_and_cl": b"POST / HTTP/1.1\r\nHost: reviews\r\nContent-Length: 4\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: reviews\r\n\r\n",
    "two_lengths": b"POST / HTTP/1.1\r\nHost: reviews\r\nContent-Length: 5\r\nContent-Length: 30\r\n\r\n"
                   b"helloGET /smuggled HTTP/1.1\r\n\r\n",
    "te_not_chunked_last": b"POST / HTTP/1.1\r\nHost: reviews\r\nTransfer-Encoding: chunked, identity\r\n"
                           b"\r\n5\r\nhello\r\n0\r\n\r\n",
    "te_in_http_1_0": b"POST / HTTP/1.0\r\nHost: reviews\r\nTransfer-Encoding: chunked\r\n\r\n"
                      b"5\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", SMUGGLING)
@pytest.mark.parametrize("side", ["outbound", "inbound"])
async def test_ambiguous_framing_is_rejected_with_400_and_never_forwarded(
    proxied, name, side
):
    sidecar, v1, app = await proxied()
    port = sidecar.ports.outbound if side == "outbound" else sidecar.ports.inbound
    answer = await raw_exchange(port, SMUGGLING[name])
    assert status_of(answer) == 400, answer
    # One status line only: the smuggled GET after the body was dropped with the connection.
    assert len(re.findall(rb"(?:^|\r\n)HTTP/1\.[01] \d{3} ", answer)) == 1
    assert v1.seen == [] and app.seen == []


async def test_a_transfer_coding_other_than_chunked_is_refused_with_501(proxied):
    sidecar, v1, _ = await proxied()
    answer = await raw_exchange(sidecar.ports.outbound, b"POST / HTTP/1.1\r\nHost: reviews\r\n"
                                b"Transfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert status_of(answer) == 501
    assert v1.seen == []


@pytest.mark.parametrize("connection", [
    b"Connection: X-Foo, close\r\n",
    # A harmless first line must not hide the second: every Connection line counts.
    b"Connection: keep-alive\r\nConnection: X-Foo\r\nConnection: close\r\n",
])
async def test_connection_named_smuggled_field_is_removed_on_the_wire(
    proxied, connection
):
    sidecar, v1, _ = await proxied()
    answer = await raw_exchange(sidecar.ports.outbound, b"GET /x HTTP/1.1\r\nHost: reviews\r\n"
                                + connection + b"X-Foo: admin=true\r\n\r\n")
    assert status_of(answer) == 200
    names = {name.lower() for name, _ in v1.seen[0].headers}
    assert "x-foo" not in names


async def test_a_body_over_the_limit_gets_413_by_content_length_without_reaching_upstream(proxied):
    sidecar, v1, app = await proxied(max_body_bytes=1000)
    for base in (sidecar.outbound, sidecar.inbound):
        async with sidecar.session.post(f"{base}/", data=b"x" * 1001,
                                        headers={"Host": "reviews"}) as r:
            assert r.status == 413
        async with sidecar.session.post(f"{base}/", data=b"x" * 1000,
                                        headers={"Host": "reviews"}) as r:
            assert r.status == 200
    assert [len(seen.body) for seen in v1.seen + app.seen] == [1000, 1000]


async def test_a_chunked_body_over_the_limit_gets_413_while_streaming(proxied):
    sidecar, v1, app = await proxied(max_body_bytes=1000)

    async def chunks():
        for _ in range(5):
            yield b"y" * 300

    for base in (sidecar.outbound, sidecar.inbound):
        async with sidecar.session.post(f"{base}/", data=chunks(),
                                        headers={"Host": "reviews"}) as r:
            assert r.status == 413
    # The upstream may see the start of the body, never a complete request over the limit.
    assert all(len(seen.body) <= 1000 for seen in v1.seen + app.seen)


async def test_bodies_stream_both_ways_without_waiting_for_the_whole(proxied):
    first_part_arrived = asyncio.Event()
    release_rest = asyncio.Event()

    async def streaming(request: web.Request) -> web.StreamResponse:
        first = await request.content.readexactly(5)
        first_part_arrived.set()
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"head:" + first)
        await release_rest.wait()
        rest = await request.content.read()
        await response.write(b"|tail:" + str(len(rest)).encode())
        await response.write_eof()
        return response

    sidecar, v1, _ = await proxied(streaming,
                                      timeout_seconds=5,
                                      retries={"attempts": 0, "per_try_timeout_seconds": 5})

    async def body():
        yield b"first"
        # Only a proxy that streams the request lets the upstream see this part first.
        await asyncio.wait_for(first_part_arrived.wait(), 3)
        for _ in range(100):
            yield b"z" * 10_000

    async with sidecar.session.post(f"{sidecar.outbound}/stream", data=body(),
                                    headers={"Host": "reviews"}) as r:
        assert r.status == 200
        # And only a proxy that streams the response shows this before the upstream is done.
        head = await asyncio.wait_for(r.content.readexactly(10), 3)
        assert head == b"head:first"
        release_rest.set()
        assert await r.content.read() == b"|tail:1000000"


async def test_a_large_body_passes_through_intact(proxied):
    async def count(request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.Response(text=str(total))

    sidecar, _, _ = await proxied(count,
                                     max_body_bytes=64 * 1024 * 1024)

    async def body():
        for _ in range(32):
            yield b"b" * (1024 * 1024)

    for base in (sidecar.outbound, sidecar.inbound):
        async with sidecar.session.post(f"{base}/stream", data=body(),
                                        headers={"Host": "reviews"}) as r:
            assert (r.status, await r.text()) == (200, str(32 * 1024 * 1024))


async def test_head_keeps_the_upstreams_content_length_and_sends_no_body(proxied):
    async def sized(request: web.Request) -> web.Response:
        return web.Response(body=b"0123456789", content_type="text/plain")

    sidecar, _, _ = await proxied(sized)
    answer = await raw_exchange(sidecar.ports.outbound,
                                b"HEAD / HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert status_of(answer) == 200
    assert b"\r\nContent-Length: 10" in head and rest == b""


async def test_an_upstream_that_dies_mid_body_is_not_passed_on_as_a_complete_response(proxied):
    async def dies(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"partial")
        await asyncio.sleep(0.05)
        request.transport.abort()
        return response

    sidecar, _, _ = await proxied(dies)
    async with sidecar.session.get(f"{sidecar.outbound}/stream", headers={"Host": "reviews"}) as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
