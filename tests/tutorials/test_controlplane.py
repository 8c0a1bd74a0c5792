"""The control-plane tutorial's steps do what its page says, each on a real server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.tutorials.conftest import step, steps

TOKEN = "tutorial-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
URL = "/v1/services/reviews/config"
CONFIG = {
    "routes": {"hosts": ["reviews"], "http": [{"route": [
        {"destination": {"host": "reviews", "subset": "v1"}}]}]},
    "clusters": {"reviews": {"v1": ["127.0.0.1:9081"]}},
}


@pytest.fixture
def start(aiohttp_client: Any, tmp_path: Path) -> Any:
    """Start a step's app; step 5 gets a SQLite file in tmp_path and the token."""

    async def start_step(module: ModuleType) -> Any:
        if module.__name__.endswith("step05_sqlite"):
            return await aiohttp_client(module.create_app(str(tmp_path / "cp.db"), TOKEN))
        return await aiohttp_client(module.create_app())

    return start_step


@pytest.mark.parametrize("module", steps("controlplane"))
async def test_each_put_stores_the_next_version_and_get_returns_the_newest(
    module: ModuleType, start: Any
) -> None:
    client = await start(module)
    assert (await client.get(URL)).status == 404
    for expected in (1, 2):
        put = await client.put(URL, json=CONFIG, headers=AUTH)
        assert put.status == 200, await put.text()
        assert (await put.json())["version"] == expected
    body = await (await client.get(URL)).json()
    assert body == {"version": 2, "config": CONFIG}


async def test_step_1_accepts_a_config_step_2_refuses(start: Any) -> None:
    client = await start(step("controlplane", "step01_store"))
    assert (await client.put(URL, json={"routes": {}})).status == 200


@pytest.mark.parametrize("module", steps("controlplane", 2))
async def test_an_invalid_config_gets_400_naming_the_field(module: ModuleType, start: Any) -> None:
    client = await start(module)
    bad = {**CONFIG, "clusters": {"reviews": {"v1": ["no-port"]}}}
    response = await client.put(URL, json=bad, headers=AUTH)
    assert response.status == 400
    assert "clusters.reviews.v1[0]" in (await response.json())["error"]
    not_json = await client.put(URL, data=b"{nope", headers=AUTH)
    assert not_json.status == 400
    assert (await client.get(URL)).status == 404, "a refused config must not be stored"


@pytest.mark.parametrize("module", steps("controlplane", 3))
async def test_a_client_that_has_the_version_gets_304_without_a_body(
    module: ModuleType, start: Any
) -> None:
    client = await start(module)
    await client.put(URL, json=CONFIG, headers=AUTH)
    first = await client.get(URL)
    assert first.headers["ETag"] == '"1"'
    again = await client.get(URL, headers={"If-None-Match": '"1"'})
    assert again.status == 304
    assert await again.read() == b""
    weak = await client.get(URL, headers={"If-None-Match": 'W/"1"'})
    assert weak.status == 304
    older = await client.get(URL, headers={"If-None-Match": '"0"'})
    assert older.status == 200


@pytest.mark.parametrize("module", steps("controlplane", 4))
async def test_a_long_poll_wakes_as_soon_as_a_new_version_is_put(
    module: ModuleType, start: Any
) -> None:
    client = await start(module)
    await client.put(URL, json=CONFIG, headers=AUTH)
    poll = asyncio.create_task(client.get(f"{URL}?wait=10", headers={"If-None-Match": '"1"'}))
    await asyncio.sleep(0.05)
    assert not poll.done(), "the poll should wait while version 1 is the newest"
    await client.put(URL, json=CONFIG, headers=AUTH)
    # Far below the 10 s wait: the PUT woke the poll, the wait did not run out.
    response = await asyncio.wait_for(poll, timeout=2)
    assert response.status == 200
    assert (await response.json())["version"] == 2


@pytest.mark.parametrize("module", steps("controlplane", 4))
async def test_a_long_poll_answers_304_when_the_wait_runs_out(
    module: ModuleType, start: Any
) -> None:
    client = await start(module)
    await client.put(URL, json=CONFIG, headers=AUTH)
    response = await client.get(f"{URL}?wait=0.1", headers={"If-None-Match": '"1"'})
    assert response.status == 304
    for bad in ("-1", "nan", "soon"):
        assert (await client.get(f"{URL}?wait={bad}")).status == 400


async def test_step_5_keeps_versions_across_app_instances(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    module = step("controlplane", "step05_sqlite")
    db = str(tmp_path / "cp.db")
    first = await aiohttp_client(module.create_app(db, TOKEN))
    await first.put(URL, json=CONFIG, headers=AUTH)
    await first.close()
    second = await aiohttp_client(module.create_app(db, TOKEN))
    assert (await (await second.get(URL)).json())["version"] == 1
    put = await second.put(URL, json=CONFIG, headers=AUTH)
    assert (await put.json())["version"] == 2


async def test_step_5_refuses_a_put_without_the_right_token(start: Any) -> None:
    client = await start(step("controlplane", "step05_sqlite"))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = await client.put(URL, json=CONFIG, headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert (await client.get(URL)).status == 404, "reads stay open, and nothing was stored"


def test_step_5_will_not_start_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIDECARLAB_TOKEN", raising=False)
    with pytest.raises(ValueError, match="SIDECARLAB_TOKEN"):
        step("controlplane", "step05_sqlite").create_app(":memory:")
