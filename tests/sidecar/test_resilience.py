"""Breakers, retries and timeouts on the outbound side, against real upstreams on loopback."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from reference.breaker import State

from .conftest import single_config, weighted_config

FAST = {"backoff_base_seconds": 0.001, "backoff_max_seconds": 0.002}


async def get(sidecar, path="/", method="GET", **kwargs):
    """Send one call of the app through the outbound listener; return (status, headers, text)."""
    url = f"{sidecar.outbound}{path}"
    async with sidecar.session.request(method, url, headers={"Host": "reviews"}, **kwargs) as r:
        return r.status, r.headers, await r.text()


async def test_a_killed_upstream_opens_the_breaker_which_then_fails_fast_and_recovers(
    upstream, control_plane, start_sidecar
):
    v1 = await upstream("v1")
    sidecar = await start_sidecar()
    config = single_config(v1.address, retries={"attempts": 0},
                           breaker={"failure_threshold": 3, "recovery_timeout_seconds": 0.5})
    await sidecar.wait_for_version(control_plane.publish("productpage", config))
    assert (await get(sidecar))[0] == 200
    port = v1.port
    await v1.stop()
    assert [(await get(sidecar))[0] for _ in range(3)] == [502, 502, 502]
    breaker = sidecar.sidecar.outbound.breakers["reviews/v1"]
    assert breaker.state is State.OPEN

    started = time.perf_counter()
    answers = [await get(sidecar) for _ in range(20)]
    elapsed = time.perf_counter() - started
    assert {(status, headers["x-sidecarlab-breaker"]) for status, headers, _ in answers} == {
        (503, "open")
    }
    assert "circuit breaker open" in answers[0][2]
    # 20 answers without touching the network: a loaded CI machine still does that in well
    # under a second (locally it takes a few milliseconds).
    assert elapsed < 1.0

    revived = await upstream("v1", port=port)
    await asyncio.sleep(0.6)  # past the recovery timeout: the next call is a trial
    assert (await get(sidecar))[0] == 200
    assert breaker.state is State.CLOSED
    assert len(revived.seen) == 1


async def test_one_apps_failing_upstream_does_not_open_another_upstreams_breaker(
    upstream, control_plane, start_sidecar
):
    v1 = await upstream("v1")
    sidecar = await start_sidecar()
    config = weighted_config({"v1": 50, "v2": 50}, {"v1": [v1.address], "v2": ["127.0.0.1:9"]},
                             retries={"attempts": 0}, breaker={"failure_threshold": 2})
    await sidecar.wait_for_version(control_plane.publish("productpage", config))
    statuses = [(await get(sidecar))[0] for _ in range(10)]
    breakers = sidecar.sidecar.outbound.breakers
    assert breakers["reviews/v2"].state is State.OPEN
    assert breakers["reviews/v1"].state is State.CLOSED
    assert statuses.count(200) == 5


def flaky(failures: int, status: int = 503):
    """An upstream handler that answers `status` `failures` times, then 200."""
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls <= failures:
            return web.Response(status=status, text="not yet")
        return web.Response(text="ok")

    return handler


async def test_idempotent_requests_are_retried_on_503_and_succeed(proxied):
    sidecar, v1, _ = await proxied(flaky(2), retries={"attempts": 2, **FAST})
    status, _, text = await get(sidecar)
    assert (status, text) == (200, "ok")
    assert len(v1.seen) == 3
    assert sidecar.sidecar.outbound.retries == 2


async def test_retries_stop_at_the_configured_number_of_attempts(proxied):
    sidecar, v1, _ = await proxied(flaky(10, status=502), retries={"attempts": 2, **FAST},
                           breaker={"failure_threshold": 50})
    status, _, text = await get(sidecar)
    assert (status, text) == (502, "not yet")  # the upstream's own answer is passed on
    assert len(v1.seen) == 3


async def test_post_is_never_retried(proxied):
    sidecar, v1, _ = await proxied(flaky(1), retries={"attempts": 3, **FAST})
    assert (await get(sidecar, method="POST", data=b"order=1"))[0] == 503
    assert len(v1.seen) == 1


async def test_a_put_whose_body_was_streamed_is_not_retried(proxied):
    sidecar, v1, _ = await proxied(flaky(1), retries={"attempts": 3, **FAST})
    assert (await get(sidecar, method="PUT", data=b"x" * 1000))[0] == 503
    assert [seen.body for seen in v1.seen] == [b"x" * 1000]


async def test_a_put_is_retried_on_another_endpoint_after_a_connect_error(
    upstream, control_plane, start_sidecar
):
    v1 = await upstream("v1")
    sidecar = await start_sidecar()
    # Port 9 (discard) refuses on loopback: the body was never read, so a retry is safe.
    config = {
        "routes": {"hosts": ["reviews"], "http": [
            {"route": [{"destination": {"host": "reviews", "subset": "v1"}}]}]},
        "clusters": {"reviews": {"v1": ["127.0.0.1:9", v1.address]}},
        "retries": {"attempts": 1, **FAST},
        "breaker": {"failure_threshold": 10},
    }
    await sidecar.wait_for_version(control_plane.publish("productpage", config))
    assert (await get(sidecar, method="PUT", data=b"payload"))[0] == 200
    assert [seen.body for seen in v1.seen] == [b"payload"]


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(3)
    return web.Response(text="too late")


async def test_a_per_try_timeout_gives_504_after_the_retries(proxied):
    sidecar, v1, _ = await proxied(slow, timeout_seconds=2.0, retries={
        "attempts": 1, "per_try_timeout_seconds": 0.2, **FAST})
    started = time.perf_counter()
    status, _, text = await get(sidecar)
    elapsed = time.perf_counter() - started
    assert status == 504 and "timed out" in text
    assert len(v1.seen) == 2
    # Two tries of 0.2 s; the upper bound is wide for a slow CI machine, yet far below 3 s.
    assert 0.35 < elapsed < 1.5


async def test_the_overall_timeout_caps_tries_and_backoff(proxied):
    sidecar, v1, _ = await proxied(slow, timeout_seconds=0.3, retries={
        "attempts": 5, "per_try_timeout_seconds": 1.0, **FAST})
    started = time.perf_counter()
    assert (await get(sidecar))[0] == 504
    elapsed = time.perf_counter() - started
    assert 0.25 < elapsed < 1.5
    assert len(v1.seen) == 1
