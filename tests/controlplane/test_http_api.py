"""The HTTP API on a real aiohttp server on 127.0.0.1, backed by a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiohttp.test_utils import TestClient

from reference.controlplane.hub import ConfigHub

from .conftest import AUTH, TOKEN, make_config

CONFIG = "/v1/services/reviews/config"


async def put(client: TestClient, config: object, service: str = "reviews") -> int:
    response = await client.put(f"/v1/services/{service}/config", json=config, headers=AUTH)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["service"] == service
    return body["version"]


async def current_version(client: TestClient) -> int | None:
    response = await client.get(CONFIG)
    return (await response.json())["version"] if response.status == 200 else None


# -- PUT and GET ------------------------------------------------------------------------------


async def test_a_valid_config_is_stored_as_version_1_and_read_back_with_its_etag(client):
    response = await client.put(CONFIG, json=make_config(), headers=AUTH)
    assert response.status == 200
    assert await response.json() == {"service": "reviews", "version": 1}

    response = await client.get(CONFIG)
    assert response.status == 200
    assert response.headers["ETag"] == '"1"'
    assert await response.json() == {"service": "reviews", "version": 1, "config": make_config()}


async def test_each_put_stores_the_next_version_of_that_service_only(client):
    assert await put(client, make_config("v1")) == 1
    assert await put(client, make_config("v2")) == 2
    assert await put(client, make_config("v1"), service="ratings") == 1
    response = await client.get(CONFIG)
    assert (await response.json())["config"] == make_config("v2")
    response = await client.get("/v1/services")
    assert await response.json() == {
        "services": [{"service": "ratings", "version": 1}, {"service": "reviews", "version": 2}]
    }


@pytest.mark.parametrize("if_none_match", ['"1"', 'W/"1"', '"0", "1"', "*"])
async def test_a_client_that_has_the_current_version_gets_304_with_the_etag(client, if_none_match):
    await put(client, make_config())
    response = await client.get(CONFIG, headers={"If-None-Match": if_none_match})
    assert response.status == 304
    assert response.headers["ETag"] == '"1"'


async def test_a_client_with_an_older_etag_gets_the_new_version(client):
    await put(client, make_config("v1"))
    await put(client, make_config("v2"))
    response = await client.get(CONFIG, headers={"If-None-Match": '"1"'})
    assert response.status == 200
    assert (await response.json())["version"] == 2


# -- long polls -------------------------------------------------------------------------------


async def test_a_long_poll_wakes_up_as_soon_as_a_new_version_is_stored(client):
    await put(client, make_config("v1"))
    started = time.monotonic()
    poll = asyncio.create_task(
        client.get(CONFIG, params={"wait": "30"}, headers={"If-None-Match": '"1"'})
    )
    await asyncio.sleep(0.1)
    assert not poll.done(), "the poll should wait while nothing is new"
    await put(client, make_config("v2"))
    response = await asyncio.wait_for(poll, timeout=5)
    # Far below the 30 s asked for; the wide bound only absorbs a slow CI machine.
    assert time.monotonic() - started < 5
    assert response.status == 200
    assert response.headers["ETag"] == '"2"'
    assert (await response.json())["config"] == make_config("v2")


async def test_a_long_poll_answers_304_when_the_wait_runs_out(client):
    await put(client, make_config())
    started = time.monotonic()
    response = await client.get(CONFIG, params={"wait": "0.2"}, headers={"If-None-Match": '"1"'})
    assert response.status == 304
    assert time.monotonic() - started >= 0.15  # it did wait; the margin absorbs clock rounding


async def test_the_wait_is_capped_by_the_server(make_client):
    client = await make_client(max_wait=0.2)
    await put(client, make_config())
    started = time.monotonic()
    response = await client.get(CONFIG, params={"wait": "3600"}, headers={"If-None-Match": '"1"'})
    assert response.status == 304
    assert time.monotonic() - started < 3  # capped to 0.2 s; wide for slow machines


async def test_a_long_poll_for_a_service_without_config_gets_its_first_version(client):
    poll = asyncio.create_task(client.get(CONFIG, params={"wait": "30"}))
    await asyncio.sleep(0.1)
    assert not poll.done()
    await put(client, make_config())
    response = await asyncio.wait_for(poll, timeout=5)
    assert response.status == 200
    assert (await response.json())["version"] == 1


async def test_a_long_poll_for_a_service_that_never_gets_a_config_ends_in_404(client):
    response = await client.get(CONFIG, params={"wait": "0.1"})
    assert response.status == 404


async def test_long_polls_end_with_503_when_the_control_plane_shuts_down(client, hub: ConfigHub):
    await put(client, make_config())
    poll = asyncio.create_task(
        client.get(CONFIG, params={"wait": "30"}, headers={"If-None-Match": '"1"'})
    )
    await asyncio.sleep(0.1)
    hub.close()
    response = await asyncio.wait_for(poll, timeout=5)
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert hub.watcher_count() == 0


@pytest.mark.parametrize("wait", ["-1", "soon", "nan", "inf"])
async def test_a_wait_that_is_not_a_finite_number_of_seconds_is_400(client, wait):
    await put(client, make_config())
    response = await client.get(CONFIG, params={"wait": wait})
    assert response.status == 400
    assert "wait" in (await response.json())["error"]


# -- what is refused, and that it changes nothing ---------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
     {"Authorization": "Bearer"}, {"Authorization": "Bearer ünïcode"}],
    ids=["no header", "wrong token", "other scheme", "empty token", "non-ascii token"],
)
async def test_changes_without_the_right_bearer_token_are_401_and_store_nothing(client, headers):
    response = await client.put(CONFIG, json=make_config(), headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error" in await response.json()
    response = await client.post(
        "/v1/services/reviews/rollback", json={"version": 1}, headers=headers
    )
    assert response.status == 401
    assert await current_version(client) is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "invalid JSON"),
        (b'{"routes": NaN}', "NaN is not a JSON number"),
        (b'{"routes": {}, "routes": {}}', "duplicate key 'routes'"),
        (b"[1, 2]", "must be a JSON object"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[" * 100_000, "nested too deeply"),
        (json.dumps({"routes": make_config()["routes"]}).encode(), "clusters"),
        (json.dumps(make_config("v2") | {"clusters": {"reviews": {"v1": ["x:1"]}}}).encode(),
         "v2"),
        (json.dumps(make_config(timeout_seconds=-1)).encode(), "timeout_seconds"),
    ],
    ids=["syntax", "nan", "duplicate key", "array", "not utf-8", "deep", "missing clusters",
         "unknown subset", "negative timeout"],
)
async def test_an_invalid_config_is_400_with_the_reason_and_nothing_changes(client, body, reason):
    await put(client, make_config())
    response = await client.put(CONFIG, data=body, headers=AUTH)
    assert response.status == 400
    assert reason in (await response.json())["error"]
    response = await client.get(CONFIG)
    assert (await response.json()) == {"service": "reviews", "version": 1, "config": make_config()}
    response = await client.get("/v1/services/reviews/versions")
    assert [v["version"] for v in (await response.json())["versions"]] == [1]


async def test_a_config_over_the_size_limit_is_413_and_stores_nothing(make_client):
    client = await make_client(max_config_bytes=2048)
    big = make_config(padding="x" * 4096)
    response = await client.put(CONFIG, json=big, headers=AUTH)
    assert response.status == 413
    assert "2048" in (await response.json())["error"]

    async def chunks():  # no Content-Length: the limit must hold while reading, too
        for _ in range(8):
            yield b"x" * 1024

    response = await client.put(CONFIG, data=chunks(), headers=AUTH)
    assert response.status == 413
    assert await current_version(client) is None


@pytest.mark.parametrize(
    "path",
    [CONFIG, "/v1/services/reviews/versions", "/v1/services/reviews/status"],
)
async def test_reading_a_service_without_config_is_404(client, path):
    response = await client.get(path)
    assert response.status == 404
    assert "reviews" in (await response.json())["error"]


@pytest.mark.parametrize(
    "name",
    ["Reviews", "-reviews", "reviews-", "a" * 64, "re_views", "re.views", "reviews%0A", "%C3%A9"],
)
async def test_a_service_name_that_is_not_a_dns_label_is_400(client, name):
    response = await client.put(f"/v1/services/{name}/config", json=make_config(), headers=AUTH)
    assert response.status == 400
    assert "invalid service name" in (await response.json())["error"]
    response = await client.get(f"/v1/services/{name}/config")
    assert response.status == 400


async def test_the_longest_dns_label_is_a_valid_name(client):
    name = "a" + "-" * 61 + "b"
    assert await put(client, make_config(), service=name) == 1


# -- rollback ---------------------------------------------------------------------------------


async def test_a_rollback_stores_the_old_config_as_a_new_higher_version(client):
    await put(client, make_config("v1"))
    await put(client, make_config("v2"))
    poll = asyncio.create_task(
        client.get(CONFIG, params={"wait": "30"}, headers={"If-None-Match": '"2"'})
    )
    response = await client.post("/v1/services/reviews/rollback", json={"version": 1}, headers=AUTH)
    assert response.status == 200
    assert await response.json() == {"service": "reviews", "version": 3, "rollback_of": 1}

    # Clients apply only newer versions, so the rollback reaches them like any change.
    response = await asyncio.wait_for(poll, timeout=5)
    assert await response.json() == {
        "service": "reviews", "version": 3, "config": make_config("v1")
    }
    response = await client.get("/v1/services/reviews/versions")
    body = await response.json()
    assert body["latest"] == 3
    assert [(v["version"], v["rollback_of"]) for v in body["versions"]] == [
        (3, 1), (2, None), (1, None)
    ]


async def test_a_rollback_to_a_version_that_does_not_exist_is_404(client):
    await put(client, make_config())
    response = await client.post("/v1/services/reviews/rollback", json={"version": 7}, headers=AUTH)
    assert response.status == 404
    assert "no version 7" in (await response.json())["error"]
    response = await client.post("/v1/services/ratings/rollback", json={"version": 1}, headers=AUTH)
    assert response.status == 404


async def test_a_rollback_to_a_config_that_todays_rules_refuse_is_409(client, repository):
    repository.put("reviews", '{"routes": {}}')  # stored before the validator knew better
    await put(client, make_config())
    response = await client.post("/v1/services/reviews/rollback", json={"version": 1}, headers=AUTH)
    assert response.status == 409
    assert "no longer a valid config" in (await response.json())["error"]
    assert await current_version(client) == 2


@pytest.mark.parametrize(
    "body", [b"", b"{", b"[]", b'{"version": "1"}', b'{"version": true}', b'{"version": 0}']
)
async def test_a_rollback_without_a_positive_version_number_is_400(client, body):
    await put(client, make_config())
    response = await client.post("/v1/services/reviews/rollback", data=body, headers=AUTH)
    assert response.status == 400
    assert "version" in (await response.json())["error"]
    assert await current_version(client) == 1


async def test_the_versions_list_is_newest_first_and_limited(client):
    for _ in range(3):
        await put(client, make_config())
    response = await client.get("/v1/services/reviews/versions", params={"limit": "2"})
    assert [v["version"] for v in (await response.json())["versions"]] == [3, 2]
    response = await client.get("/v1/services/reviews/versions", params={"limit": "1.5"})
    assert response.status == 400


# -- nodes and probes -------------------------------------------------------------------------


async def test_status_shows_each_nodes_ack_or_nack_with_the_reason(client, hub):
    await put(client, make_config("v1"))
    await put(client, make_config("v2"))
    await hub.record_ack("node-a", "reviews", 1, "n1", True)
    await hub.record_ack("node-a", "reviews", 2, "n2", False, "clusters.reviews: bad endpoint")
    await hub.record_ack("node-b", "reviews", 2, "n3", True)
    response = await client.get("/v1/services/reviews/status")
    body = await response.json()
    assert body["version"] == 2
    a, b = body["nodes"]
    assert (a["node_id"], a["state"], a["version"], a["nonce"]) == ("node-a", "NACK", 2, "n2")
    assert a["error_detail"] == "clusters.reviews: bad endpoint"
    assert (a["applied_version"], a["in_sync"]) == (1, False)  # the NACK left it on version 1
    assert (b["node_id"], b["state"], b["applied_version"]) == ("node-b", "ACK", 2)
    assert b["in_sync"]
    assert a["health"] == "unknown"  # it never sent a heartbeat to this process


async def test_nodes_are_listed_with_their_health(client, registry, clock):
    registry.heartbeat(
        "node-a", hostname="host-a", facts={"apps": "2"}, applied_versions={"reviews": 3}
    )
    clock.advance(20)
    registry.heartbeat("node-b", hostname="host-b")
    response = await client.get("/v1/nodes")
    body = await response.json()
    assert (body["suspect_after_seconds"], body["dead_after_seconds"]) == (15.0, 60.0)
    a, b = body["nodes"]
    assert (a["node_id"], a["hostname"], a["health"]) == ("node-a", "host-a", "suspect")
    assert a["last_heartbeat_age_seconds"] == 20
    assert (a["facts"], a["applied_versions"]) == ({"apps": "2"}, {"reviews": 3})
    assert (b["node_id"], b["health"]) == ("node-b", "healthy")


async def test_healthz_answers_200(client):
    response = await client.get("/healthz")
    assert response.status == 200
