"""The node-agent tutorial's steps do what its page says, with real listeners on 127.0.0.1."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.tutorials.conftest import reviews_config, step, steps

REVIEWS = {"Host": "reviews"}


async def start_agent(module: ModuleType, aiohttp_client: Any, **options: Any) -> Any:
    """Start a step's local API with what that step needs (an upstream, configs, a feed)."""
    name = module.__name__.rpartition(".")[2]
    if name == "step02_listeners":
        return await aiohttp_client(module.create_app(options["upstream"].address))
    if name == "step03_isolation":
        config = reviews_config({"v1": options["upstream"]}, {"v1": 100}, **options["extra"])
        return await aiohttp_client(module.create_app({"reviews": config}))
    if name in ("step04_fan_out", "step05_cache"):
        plane = options["control_plane"]
        await plane.put("/v1/services/reviews/config", json=reviews_config(
            {"v1": options["upstream"]}, {"v1": 100}, **options["extra"]))
        url = str(plane.make_url("/")).rstrip("/")
        extra = {"cache_dir": options["cache_dir"]} if name == "step05_cache" else {}
        return await aiohttp_client(module.create_app(url, wait=0.5, **extra))
    return await aiohttp_client(module.create_app())


async def register(agent: Any, app_id: str, service: str = "reviews") -> dict[str, Any]:
    response = await agent.post("/v1/apps", json={"app_id": app_id, "service": service})
    assert response.status == 201, await response.text()
    return await response.json()


async def call(session: aiohttp.ClientSession, address: str) -> aiohttp.ClientResponse:
    """What a local app does: call `reviews` through its own outbound listener."""
    async with asyncio.timeout(3):
        while True:  # steps 4-5 answer 503 until the feed delivered the first config
            response = await session.get(f"http://{address}/reviews/1", headers=REVIEWS)
            if response.status != 503 or "no config yet" not in await response.text():
                return response
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("module", steps("nodeagent"))
async def test_apps_register_list_and_deregister(
    module: ModuleType, aiohttp_client: Any, upstream: Any, control_plane: Any, tmp_path: Path
) -> None:
    agent = await start_agent(module, aiohttp_client, upstream=await upstream("v1"), extra={},
                              control_plane=control_plane, cache_dir=str(tmp_path))
    await register(agent, "reviews-v1-a")
    duplicate = await agent.post("/v1/apps", json={"app_id": "reviews-v1-a", "service": "reviews"})
    assert duplicate.status == 409
    for bad in ({"app_id": "x"}, {"app_id": "x", "service": "Not A Label"}, ["x"]):
        assert (await agent.post("/v1/apps", json=bad)).status == 400
    listed = (await (await agent.get("/v1/apps")).json())["apps"]
    assert [app["app_id"] for app in listed] == ["reviews-v1-a"]
    assert (await agent.delete("/v1/apps/reviews-v1-a")).status == 204
    assert (await agent.delete("/v1/apps/reviews-v1-a")).status == 404


async def test_step_1_serves_its_api_on_a_unix_domain_socket() -> None:
    # A short folder of its own: AF_UNIX paths are limited to about 100 bytes.
    with tempfile.TemporaryDirectory(prefix="sl-") as folder:
        path = str(Path(folder) / "agent.sock")
        runner = web.AppRunner(step("nodeagent", "step01_registry").create_app())
        await runner.setup()
        await web.UnixSite(runner, path).start()
        try:
            connector = aiohttp.UnixConnector(path=path)
            async with aiohttp.ClientSession(connector=connector) as session:
                body = {"app_id": "a", "service": "reviews"}
                response = await session.post("http://agent/v1/apps", json=body)
                assert response.status == 201
        finally:
            await runner.cleanup()


@pytest.mark.parametrize("module", steps("nodeagent", 2))
async def test_each_app_gets_its_own_listener_which_deregister_closes(
    module: ModuleType, aiohttp_client: Any, upstream: Any, control_plane: Any, tmp_path: Path
) -> None:
    v1 = await upstream("v1")
    agent = await start_agent(module, aiohttp_client, upstream=v1, extra={},
                              control_plane=control_plane, cache_dir=str(tmp_path))
    first = (await register(agent, "a"))["outbound_address"]
    second = (await register(agent, "b"))["outbound_address"]
    assert first != second and first.startswith("127.0.0.1:")
    async with aiohttp.ClientSession() as session:
        for address in (first, second):
            assert (await (await call(session, address)).json())["upstream"] == "v1"
        await agent.delete("/v1/apps/a")
        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(f"http://{first}/", headers=REVIEWS)
    assert v1.hits == 2


@pytest.mark.parametrize("module", steps("nodeagent", 3))
async def test_one_apps_failures_open_only_its_own_breaker(
    module: ModuleType, aiohttp_client: Any, upstream: Any, control_plane: Any, tmp_path: Path
) -> None:
    v1 = await upstream("v1")
    v1.status = 503
    agent = await start_agent(
        module, aiohttp_client, upstream=v1, control_plane=control_plane, cache_dir=str(tmp_path),
        extra={"breaker": {"failure_threshold": 2, "recovery_timeout_seconds": 30}},
    )
    noisy = (await register(agent, "noisy"))["outbound_address"]
    quiet = (await register(agent, "quiet"))["outbound_address"]
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            await call(session, noisy)
        assert "circuit open" in await (await call(session, noisy)).text()
        assert v1.hits == 2
        # The neighbour's breaker is its own and still closed: its call reaches the upstream.
        await call(session, quiet)
        assert v1.hits == 3


async def test_step_2_shares_nothing_but_also_protects_nothing(
    aiohttp_client: Any, upstream: Any
) -> None:
    v1 = await upstream("v1")
    v1.status = 503
    agent = await start_agent(step("nodeagent", "step02_listeners"), aiohttp_client, upstream=v1)
    address = (await register(agent, "noisy"))["outbound_address"]
    async with aiohttp.ClientSession() as session:
        for _ in range(4):
            await call(session, address)
    assert v1.hits == 4


@pytest.mark.parametrize("module", steps("nodeagent", 4))
async def test_one_feed_per_service_reaches_every_app_of_it(
    module: ModuleType, aiohttp_client: Any, upstream: Any, control_plane: Any, tmp_path: Path
) -> None:
    v1, v2 = await upstream("v1"), await upstream("v2")
    agent = await start_agent(module, aiohttp_client, upstream=v1, extra={},
                              control_plane=control_plane, cache_dir=str(tmp_path))
    addresses = [(await register(agent, app_id))["outbound_address"] for app_id in "abc"]
    assert len(agent.app[module.FEEDS].syncs) == 1, "one feed for the service, not one per app"
    async with aiohttp.ClientSession() as session:
        for address in addresses:
            assert (await (await call(session, address)).json())["upstream"] == "v1"
        await control_plane.put("/v1/services/reviews/config",
                                json=reviews_config({"v1": v1, "v2": v2}, {"v1": 0, "v2": 100}))
        for address in addresses:
            async with asyncio.timeout(3):
                while (await (await call(session, address)).json())["upstream"] != "v2":
                    await asyncio.sleep(0.02)


async def test_step_5_starts_from_its_disk_cache_while_the_control_plane_is_down(
    aiohttp_client: Any, upstream: Any, control_plane: Any, tmp_path: Path
) -> None:
    module = step("nodeagent", "step05_cache")
    v1 = await upstream("v1")
    online = await start_agent(module, aiohttp_client, upstream=v1, extra={},
                               control_plane=control_plane, cache_dir=str(tmp_path))
    address = (await register(online, "a"))["outbound_address"]
    async with aiohttp.ClientSession() as session:
        await call(session, address)
        await online.close()
        assert (tmp_path / "reviews.json").exists()
        # Port 9 (discard) on loopback: nothing listens there, so every poll is refused.
        offline = await aiohttp_client(
            module.create_app("http://127.0.0.1:9", wait=0.5, cache_dir=str(tmp_path)))
        address = (await register(offline, "b"))["outbound_address"]
        response = await session.get(f"http://{address}/reviews/1", headers=REVIEWS)
        assert (await response.json())["upstream"] == "v1"
