"""The reviews app's HTTP behaviour, on a real server on loopback (aiohttp_client)."""

from __future__ import annotations

import random
import time

import pytest

from reference.app import create_app


async def reviews_of(client, product: int = 1) -> dict:
    response = await client.get(f"/reviews/{product}")
    assert response.status == 200
    return await response.json()


async def test_v1_answers_reviews_without_ratings(aiohttp_client):
    client = await aiohttp_client(create_app("v1"))
    body = await reviews_of(client, 42)
    assert body["id"] == 42
    assert body["version"] == "v1"
    assert len(body["reviews"]) == 2
    assert all("rating" not in review for review in body["reviews"])
    assert all(review["reviewer"] and review["text"] for review in body["reviews"])


@pytest.mark.parametrize(("version", "color"), [("v2", "black"), ("v3", "red")])
async def test_v2_and_v3_rate_every_review_in_their_own_star_color(aiohttp_client, version, color):
    client = await aiohttp_client(create_app(version))
    body = await reviews_of(client)
    assert body["version"] == version
    ratings = [review["rating"] for review in body["reviews"]]
    assert {rating["color"] for rating in ratings} == {color}
    assert all(1 <= rating["stars"] <= 5 for rating in ratings)


def test_an_unknown_version_is_refused_when_the_app_is_built():
    with pytest.raises(ValueError, match="v1, v2, v3"):
        create_app("v4")


@pytest.mark.parametrize("path", ["/reviews/abc", "/reviews/1234567890", "/reviews/", "/reviews/1/x"])
async def test_a_product_id_that_is_not_a_short_number_is_not_found(aiohttp_client, path):
    client = await aiohttp_client(create_app("v1"))
    response = await client.get(path)
    assert response.status == 404


async def test_healthz_answers_ok(aiohttp_client):
    client = await aiohttp_client(create_app("v2"))
    response = await client.get("/healthz")
    assert response.status == 200
    assert await response.text() == "ok"


async def test_without_probes_the_app_leaves_healthz_to_drain_serve(aiohttp_client):
    client = await aiohttp_client(create_app("v2", probes=False))
    response = await client.get("/healthz")
    assert response.status == 404


async def test_admin_fail_switches_failures_on_and_off_at_run_time(aiohttp_client):
    client = await aiohttp_client(create_app("v1"))
    response = await client.post("/admin/fail", json={"fail_rate": 1})
    assert response.status == 200
    assert await response.json() == {"fail_rate": 1.0}

    failed = await client.get("/reviews/1")
    assert failed.status == 503
    assert await failed.json() == {"error": "injected failure", "version": "v1"}

    await client.post("/admin/fail", json={"fail_rate": 0})
    assert (await client.get("/reviews/1")).status == 200


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[0.5]", b"{}", b'{"fail_rate": "0.5"}', b'{"fail_rate": true}',
     b'{"fail_rate": 1.5}', b'{"fail_rate": -0.1}'],
)
async def test_admin_fail_refuses_a_bad_body_and_keeps_the_old_rate(aiohttp_client, body):
    client = await aiohttp_client(create_app("v1", fail_rate=0.0))
    response = await client.post("/admin/fail", data=body)
    assert response.status == 400
    assert "error" in await response.json()
    assert (await client.get("/reviews/1")).status == 200


async def test_admin_fail_refuses_a_body_larger_than_the_cap(aiohttp_client):
    client = await aiohttp_client(create_app("v1"))
    response = await client.post("/admin/fail", data=b"{" + b" " * 10_000 + b"}")
    assert response.status == 413


async def statuses(client, n: int) -> list[int]:
    return [(await client.get("/reviews/1")).status for _ in range(n)]


async def test_a_seeded_failure_rate_fails_the_same_requests_every_run(aiohttp_client):
    first = await aiohttp_client(create_app("v1", fail_rate=0.5, rng=random.Random(7)))
    second = await aiohttp_client(create_app("v1", fail_rate=0.5, rng=random.Random(7)))
    run = await statuses(first, 40)
    assert run == await statuses(second, 40)
    # Half of 40 draws, give or take: both outcomes must show up.
    assert 5 < run.count(503) < 35
    assert set(run) == {200, 503}


async def test_latency_delays_each_answer(aiohttp_client):
    client = await aiohttp_client(create_app("v1", latency_ms=80))
    started = time.monotonic()
    await reviews_of(client)
    # Lower bound only: a loaded machine may be slower, never faster than the sleep.
    assert time.monotonic() - started >= 0.07


def test_negative_latency_is_refused():
    with pytest.raises(ValueError, match="latency_ms"):
        create_app("v1", latency_ms=-1)
