"""The sidecar tutorial's steps do what its page says, with real upstreams on 127.0.0.1."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from types import ModuleType
from typing import Any

import aiohttp
import pytest

from reference.drain import DrainController, serve
from tests.tutorials.conftest import reviews_config, step, steps

REVIEWS = {"Host": "reviews"}


async def start_step(module: ModuleType, aiohttp_client: Any, upstream: Any) -> Any:
    """Start a step 1-4 proxy in front of upstream `v1`; steps 3-4 route host `reviews`."""
    if module.__name__.endswith(("step01_forward", "step02_headers")):
        return await aiohttp_client(module.create_app(upstream.address))
    return await aiohttp_client(module.create_app(reviews_config({"v1": upstream}, {"v1": 100})))


@pytest.mark.parametrize("module", steps("sidecar", 1, 4))
async def test_the_request_and_its_body_reach_the_upstream_and_the_answer_comes_back(
    module: ModuleType, aiohttp_client: Any, upstream: Any
) -> None:
    v1 = await upstream("v1")
    client = await start_step(module, aiohttp_client, v1)
    response = await client.post("/reviews/7?x=1", data=b"hello world", headers=REVIEWS)
    assert response.status == 200
    seen = await response.json()
    assert (seen["upstream"], seen["method"], seen["path"]) == ("v1", "POST", "/reviews/7?x=1")
    assert seen["body"] == "hello world"


async def chunks() -> Any:
    """A request body sent chunked: no Content-Length up front."""
    for part in (b"hello ", b"world"):
        yield part


async def test_step_1_fails_a_chunked_upload_by_copying_transfer_encoding(
    aiohttp_client: Any, upstream: Any
) -> None:
    v1 = await upstream("v1")
    client = await aiohttp_client(step("sidecar", "step01_forward").create_app(v1.address))
    assert (await client.post("/", data=chunks())).status == 500
    assert v1.hits == 0


@pytest.mark.parametrize("module", steps("sidecar", 2, 4))
async def test_a_chunked_upload_streams_through_once_hop_by_hop_fields_are_stripped(
    module: ModuleType, aiohttp_client: Any, upstream: Any
) -> None:
    v1 = await upstream("v1")
    client = await start_step(module, aiohttp_client, v1)
    response = await client.post("/", data=chunks(), headers=REVIEWS)
    assert (await response.json())["body"] == "hello world"


@pytest.mark.parametrize("module", steps("sidecar", 1, 4))
async def test_an_unreachable_upstream_gets_502(
    module: ModuleType, aiohttp_client: Any, upstream: Any
) -> None:
    v1 = await upstream("v1")
    client = await start_step(module, aiohttp_client, v1)
    await v1.server.close()
    assert (await client.get("/", headers=REVIEWS)).status == 502


async def test_step_1_leaks_the_fields_named_in_connection(
    aiohttp_client: Any, upstream: Any
) -> None:
    v1 = await upstream("v1")
    client = await aiohttp_client(step("sidecar", "step01_forward").create_app(v1.address))
    response = await client.get("/", headers={"Connection": "X-Foo", "X-Foo": "secret"})
    assert ("X-Foo", "secret") in [tuple(pair) for pair in (await response.json())["headers"]]


@pytest.mark.parametrize("module", steps("sidecar", 2, 4))
async def test_hop_by_hop_fields_are_stripped_in_both_directions(
    module: ModuleType, aiohttp_client: Any, upstream: Any
) -> None:
    v1 = await upstream("v1")
    v1.reply_headers = {"Connection": "X-Bar", "X-Bar": "internal", "X-Kept": "yes"}
    client = await start_step(module, aiohttp_client, v1)
    response = await client.get("/", headers={
        **REVIEWS, "Connection": "X-Foo", "X-Foo": "secret", "Keep-Alive": "timeout=5",
        "X-End-To-End": "kept",
    })
    sent = {name.lower(): value for name, value in (await response.json())["headers"]}
    assert "x-foo" not in sent and "keep-alive" not in sent
    assert sent["x-end-to-end"] == "kept"
    assert "X-Bar" not in response.headers
    assert response.headers["X-Kept"] == "yes"


@pytest.mark.parametrize("module", steps("sidecar", 3, 4))
async def test_weights_split_the_requests_exactly_over_one_round(
    module: ModuleType, aiohttp_client: Any, upstream: Any
) -> None:
    subsets = {name: await upstream(name) for name in ("v1", "v2", "v3")}
    config = reviews_config(subsets, {"v1": 50, "v2": 30, "v3": 20})
    client = await aiohttp_client(module.create_app(config))
    counts: collections.Counter[str] = collections.Counter()
    for _ in range(100):  # the weights add up to 100: one full round of the round-robin
        counts[(await (await client.get("/reviews/1", headers=REVIEWS)).json())["upstream"]] += 1
    assert counts == {"v1": 50, "v2": 30, "v3": 20}


@pytest.mark.parametrize("module", steps("sidecar", 3, 4))
async def test_an_unknown_host_gets_404_and_no_config_gets_503(
    module: ModuleType, aiohttp_client: Any, upstream: Any
) -> None:
    v1 = await upstream("v1")
    client = await start_step(module, aiohttp_client, v1)
    assert (await client.get("/", headers={"Host": "ratings"})).status == 404
    assert (await client.get("/", headers={"Host": "reviews:15001"})).status == 200
    empty = await aiohttp_client(module.create_app())
    assert (await empty.get("/", headers=REVIEWS)).status == 503
    assert v1.hits == 1


async def test_step_3_keeps_calling_a_failing_upstream(aiohttp_client: Any, upstream: Any) -> None:
    v1 = await upstream("v1")
    v1.status = 503
    config = reviews_config({"v1": v1}, {"v1": 100}, breaker={"failure_threshold": 2})
    client = await aiohttp_client(step("sidecar", "step03_routes").create_app(config))
    for _ in range(5):
        await client.get("/", headers=REVIEWS)
    assert v1.hits == 5


async def test_step_4_opens_the_breaker_and_stops_calling_a_failing_upstream(
    aiohttp_client: Any, upstream: Any
) -> None:
    v1 = await upstream("v1")
    v1.status = 503
    config = reviews_config({"v1": v1}, {"v1": 100},
                            breaker={"failure_threshold": 2, "recovery_timeout_seconds": 30})
    client = await aiohttp_client(step("sidecar", "step04_breaker").create_app(config))
    for _ in range(2):
        assert (await client.get("/", headers=REVIEWS)).status == 503
    rejected = await client.get("/", headers=REVIEWS)
    assert rejected.status == 503
    assert "circuit open" in await rejected.text()
    assert 0 < int(rejected.headers["Retry-After"]) <= 30
    assert v1.hits == 2, "an open breaker must answer without calling the upstream"


async def test_step_4_does_not_count_a_4xx_against_the_upstream(
    aiohttp_client: Any, upstream: Any
) -> None:
    v1 = await upstream("v1")
    v1.status = 404
    config = reviews_config({"v1": v1}, {"v1": 100}, breaker={"failure_threshold": 1})
    client = await aiohttp_client(step("sidecar", "step04_breaker").create_app(config))
    for _ in range(3):
        assert (await client.get("/", headers=REVIEWS)).status == 404
    assert v1.hits == 3


async def wait_for_status(client: Any, status: int, timeout: float = 3.0) -> Any:
    """Poll the sidecar until it answers `status`; the config arrives asynchronously."""
    async with asyncio.timeout(timeout):
        while True:
            response = await client.get("/reviews/1", headers=REVIEWS)
            if response.status == status:
                return response
            await asyncio.sleep(0.02)


async def test_step_5_takes_its_config_and_every_change_from_the_control_plane(
    aiohttp_client: Any, upstream: Any, control_plane: Any
) -> None:
    v1, v2 = await upstream("v1"), await upstream("v2")
    module = step("sidecar", "step05_control_plane")
    url = str(control_plane.make_url("/")).rstrip("/")
    client = await aiohttp_client(module.create_app("reviews", url, wait=0.5))
    assert (await client.get("/reviews/1", headers=REVIEWS)).status == 503
    subsets = {"v1": v1, "v2": v2}
    await control_plane.put("/v1/services/reviews/config",
                            json=reviews_config(subsets, {"v1": 100, "v2": 0}))
    assert (await (await wait_for_status(client, 200)).json())["upstream"] == "v1"
    await control_plane.put("/v1/services/reviews/config",
                            json=reviews_config(subsets, {"v1": 0, "v2": 100}))
    async with asyncio.timeout(3):
        while (await (await client.get("/reviews/1", headers=REVIEWS)).json())["upstream"] != "v2":
            await asyncio.sleep(0.02)


async def test_step_5_drains_under_serve_readiness_fails_then_it_stops(
    upstream: Any, control_plane: Any
) -> None:
    module = step("sidecar", "step05_control_plane")
    url = str(control_plane.make_url("/")).rstrip("/")
    drain = DrainController(delay=0.2, grace=1.0)
    started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve(
        module.create_app("reviews", url, wait=0.5), drain, host="127.0.0.1", port=0,
        signals=(), on_started=lambda runner: started.set_result(runner.addresses[0][1]),
    ))
    try:
        port = await asyncio.wait_for(started, 3)
        async with aiohttp.ClientSession() as session:
            base = f"http://127.0.0.1:{port}"
            assert (await session.get(f"{base}/readyz")).status == 200
            drain.start_drain()  # what SIGTERM does under serve()
            assert (await session.get(f"{base}/readyz")).status == 503
        result = await asyncio.wait_for(task, 3)
        assert result.cancelled == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
