"""The outbound fast lane: the common request answered from callbacks, everything else handed on.

The first call to an upstream opens its connection, which takes awaiting, so it goes through the
slow lane; the calls after it find an idle connection and take the fast lane. Each test warms
the connection first and then checks that the fast lane did (or did not) answer, through
`OutboundProxy.answered_nowait`, and that the answer is the one the slow lane would give.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from reference.sidecar.__main__ import build_parser

from .conftest import single_config
from .test_hygiene import raw_exchange, status_of

FAST_BACKOFF = {"backoff_base_seconds": 0.001, "backoff_max_seconds": 0.002}


async def warm(sidecar, path: str = "/warm") -> None:
    """One call through the slow lane, which leaves a keep-alive connection in the pool."""
    async with sidecar.session.get(f"{sidecar.outbound}{path}", headers={"Host": "reviews"}) as r:
        assert r.status == 200
        await r.read()


def answered_nowait(sidecar) -> int:
    return sidecar.sidecar.outbound.answered_nowait


async def test_a_plain_get_on_a_warm_connection_is_answered_on_the_fast_lane(proxied):
    sidecar, v1, _ = await proxied()
    await warm(sidecar)
    before = answered_nowait(sidecar)
    async with sidecar.session.get(f"{sidecar.outbound}/reviews/1?x=1",
                                   headers={"Host": "reviews"}) as r:
        body = await r.json()
        assert r.status == 200
        assert r.headers["Via"] == "1.1 sidecarlab"
        assert int(r.headers["Content-Length"]) == len(await r.read())
        assert "Date" in r.headers
    assert body == {"upstream": "v1", "path": "/reviews/1?x=1"}
    assert answered_nowait(sidecar) == before + 1
    assert dict(v1.seen[-1].headers)["Via"] == "1.1 sidecarlab"


async def test_the_fast_lane_strips_hop_by_hop_fields_both_ways(proxied):
    async def hop_heavy(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={
            "Keep-Alive": "timeout=5", "Proxy-Connection": "keep-alive", "X-Kept": "yes"})

    sidecar, v1, _ = await proxied(hop_heavy)
    await warm(sidecar)
    before = answered_nowait(sidecar)
    sent = {"Host": "reviews", "TE": "trailers", "Keep-Alive": "timeout=9",
            "Proxy-Connection": "keep-alive", "X-End-To-End": "kept"}
    async with sidecar.session.get(f"{sidecar.outbound}/", headers=sent) as r:
        assert r.status == 200
        got = {name.lower() for name in r.headers}
        assert not {"keep-alive", "proxy-connection"} & got
        assert r.headers["X-Kept"] == "yes"
    assert answered_nowait(sidecar) == before + 1
    received = {name.lower(): value for name, value in v1.seen[-1].headers}
    assert not {"te", "keep-alive", "proxy-connection"} & set(received)
    assert received["x-end-to-end"] == "kept"


async def test_a_connection_field_naming_another_field_is_left_to_the_slow_lane(proxied):
    sidecar, v1, _ = await proxied()
    await warm(sidecar)
    before = answered_nowait(sidecar)
    headers = {"Host": "reviews", "Connection": "keep-alive, X-Secret", "X-Secret": "smuggled"}
    async with sidecar.session.get(f"{sidecar.outbound}/", headers=headers) as r:
        assert r.status == 200
    assert answered_nowait(sidecar) == before
    assert "x-secret" not in {name.lower() for name, _ in v1.seen[-1].headers}


async def test_an_upstreams_connection_field_naming_a_field_is_honoured_on_the_way_back(proxied):
    async def naming(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"Connection": "X-Internal", "X-Internal": "1"})

    sidecar, _, _ = await proxied(naming)
    for _ in range(3):  # the first call is slow; the others reach the fast lane and hand over
        async with sidecar.session.get(f"{sidecar.outbound}/",
                                       headers={"Host": "reviews"}) as r:
            assert r.status == 200
            assert "X-Internal" not in r.headers
            assert await r.text() == "ok"  # the body the fast lane looked at is not lost
    assert answered_nowait(sidecar) == 0


async def test_a_503_met_on_the_fast_lane_is_retried_and_succeeds(proxied):
    calls = 0

    async def fails_once_warm(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return web.Response(status=503 if calls == 2 else 200, text=str(calls))

    sidecar, v1, _ = await proxied(fails_once_warm, retries={"attempts": 2, **FAST_BACKOFF})
    await warm(sidecar)
    async with sidecar.session.get(f"{sidecar.outbound}/", headers={"Host": "reviews"}) as r:
        assert (r.status, await r.text()) == (200, "3")
    assert sidecar.sidecar.outbound.retries == 1
    assert answered_nowait(sidecar) == 0  # the retry's answer came through the slow lane


async def test_a_slow_answer_on_the_fast_lane_times_out_with_504(proxied):
    calls = 0

    async def slow_when_warm(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls > 1:
            await asyncio.sleep(2)
        return web.Response(text="ok")

    sidecar, v1, _ = await proxied(slow_when_warm, timeout_seconds=1.0, retries={
        "attempts": 0, "per_try_timeout_seconds": 0.2})
    await warm(sidecar)
    started = time.perf_counter()
    async with sidecar.session.get(f"{sidecar.outbound}/", headers={"Host": "reviews"}) as r:
        assert r.status == 504
        assert "timed out" in await r.text()
    assert 0.15 < time.perf_counter() - started < 1.5
    assert calls == 2  # a timeout is not the keep-alive race: with no retries, sent once
    assert sidecar.sidecar.outbound.retries == 0


async def test_a_large_answer_is_streamed_in_full_after_the_fast_lane_hands_it_over(proxied):
    big = bytes(range(256)) * 2048  # 512 KiB: more than one read, more than the small-body limit

    async def large(request: web.Request) -> web.Response:
        return web.Response(body=big)

    sidecar, _, _ = await proxied(large)
    await warm(sidecar)
    async with sidecar.session.get(f"{sidecar.outbound}/", headers={"Host": "reviews"}) as r:
        assert r.status == 200
        assert await r.read() == big


async def test_a_keep_alive_connection_the_upstream_dropped_is_replaced_without_an_error(
        proxied):
    sidecar, v1, _ = await proxied()
    await warm(sidecar)
    # The upstream closes its idle keep-alive connections, as a restarted upstream would,
    # while the sidecar still holds one in its pool.
    for protocol in list(v1.runner.server.connections):  # type: ignore[union-attr]
        protocol.transport.close()
    await asyncio.sleep(0)  # close() only queues the FIN: the pool has not seen it yet
    breaker = sidecar.sidecar.outbound.breakers["reviews/v1"]
    async with sidecar.session.get(f"{sidecar.outbound}/again",
                                   headers={"Host": "reviews"}) as r:
        assert r.status == 200
    assert v1.seen[-1].path == "/again"
    assert breaker._consecutive_failures == 0  # noqa: SLF001  (no failure was counted)


async def test_connection_close_from_the_client_closes_after_the_fast_answer(proxied):
    sidecar, _, _ = await proxied()
    port = sidecar.ports.outbound
    warm_up = b"GET /one HTTP/1.1\r\nHost: reviews\r\n\r\n"
    last = b"GET /two HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n"
    await warm(sidecar)
    before = answered_nowait(sidecar)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(warm_up)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        await reader.readexactly(length)
        writer.write(last)
        rest = await asyncio.wait_for(reader.read(), 3)  # to EOF: the sidecar closes
    finally:
        writer.close()
    assert status_of(rest) == 200
    assert b"\r\nConnection: close\r\n" in rest.split(b"\r\n\r\n")[0] + b"\r\n"
    assert answered_nowait(sidecar) >= before + 1


async def test_an_http_1_0_client_is_answered_and_closed(proxied):
    sidecar, _, _ = await proxied()
    await warm(sidecar)
    answer = await raw_exchange(sidecar.ports.outbound, b"GET / HTTP/1.0\r\nHost: reviews\r\n\r\n")
    assert status_of(answer) == 200
    assert answer.endswith(b'"path": "/"}')


async def test_metrics_count_fast_lane_answers_like_the_others(proxied):
    sidecar, _, _ = await proxied()
    for _ in range(5):
        await warm(sidecar)
    assert answered_nowait(sidecar) == 4
    async with sidecar.session.get(f"{sidecar.admin}/metrics") as r:
        text = await r.text()
    assert 'sidecarlab_responses_total{proxy="outbound",code="200"} 5' in text
    assert 'sidecarlab_request_duration_seconds_count{proxy="outbound"} 5' in text
    assert 'sidecarlab_upstream_requests_total{proxy="outbound",upstream="reviews/v1"} 5' in text


async def test_with_the_fast_lane_off_every_request_is_served_on_a_task(
        upstream, control_plane, start_sidecar):
    v1 = await upstream("v1")
    sidecar = await start_sidecar(fast_lane=False)
    await sidecar.wait_for_version(control_plane.publish("productpage", single_config(v1.address)))
    for _ in range(3):
        await warm(sidecar)
    assert answered_nowait(sidecar) == 0
    assert len(v1.seen) == 3


def test_the_command_line_can_turn_the_fast_lane_off():
    parser = build_parser()
    assert parser.parse_args(["--service", "s", "--app-address", "127.0.0.1:1"]).fast_lane
    assert not parser.parse_args(["--service", "s", "--app-address", "127.0.0.1:1",
                                  "--no-fast-lane"]).fast_lane
