"""Traffic through a running sidecar: inbound to the app, outbound by Host and weight."""

from __future__ import annotations

import asyncio
import collections

from reference.breaker import State

from .conftest import single_config, weighted_config


async def test_inbound_traffic_reaches_the_local_app(upstream, start_sidecar):
    app = await upstream("app")
    sidecar = await start_sidecar(app_address=app.address)
    async with sidecar.session.get(f"{sidecar.inbound}/reviews/1?x=2") as response:
        assert response.status == 200
        assert (await response.json()) == {"upstream": "app", "path": "/reviews/1?x=2"}
    assert app.seen[0].path == "/reviews/1?x=2"


async def test_outbound_answers_503_and_readiness_fails_until_a_first_config(
    upstream, control_plane, start_sidecar
):
    v1 = await upstream("v1")
    sidecar = await start_sidecar()
    async with sidecar.session.get(f"{sidecar.outbound}/", headers={"Host": "reviews"}) as response:
        assert response.status == 503
        assert "no config yet" in await response.text()
    async with sidecar.session.get(f"{sidecar.admin}/readyz") as response:
        assert response.status == 503
    version = control_plane.publish("productpage", single_config(v1.address))
    await sidecar.wait_for_version(version)
    async with sidecar.session.get(f"{sidecar.admin}/readyz") as response:
        assert response.status == 200
    async with sidecar.session.get(f"{sidecar.outbound}/r", headers={"Host": "reviews:9080"}) as response:
        assert response.status == 200
        assert (await response.json())["upstream"] == "v1"


async def test_outbound_splits_by_weight_within_two_percent(upstream, control_plane, start_sidecar):
    v1, v2 = await upstream("v1"), await upstream("v2")
    sidecar = await start_sidecar()
    config = weighted_config({"v1": 80, "v2": 20}, {"v1": [v1.address], "v2": [v2.address]})
    await sidecar.wait_for_version(control_plane.publish("productpage", config))
    counts = collections.Counter()
    for _ in range(200):
        async with sidecar.session.get(f"{sidecar.outbound}/", headers={"Host": "reviews"}) as r:
            counts[(await r.json())["upstream"]] += 1
    # Smooth weighted round-robin is exact over every 100 picks; 2 % leaves room for nothing
    # but an off-by-a-few in the counting itself.
    assert abs(counts["v1"] - 160) <= 4 and abs(counts["v2"] - 40) <= 4, counts


async def test_unknown_host_gets_404_and_a_bare_cluster_name_gets_all_its_endpoints(
    upstream, control_plane, start_sidecar
):
    v1 = await upstream("v1")
    sidecar = await start_sidecar()
    config = single_config(v1.address)
    config["clusters"]["ratings"] = {"v1": [v1.address]}
    await sidecar.wait_for_version(control_plane.publish("productpage", config))
    async with sidecar.session.get(f"{sidecar.outbound}/", headers={"Host": "nowhere"}) as r:
        assert r.status == 404
    async with sidecar.session.get(f"{sidecar.outbound}/", headers={"Host": "ratings"}) as r:
        assert r.status == 200


async def test_a_new_config_applies_without_restart_and_keeps_breaker_state(
    upstream, control_plane, start_sidecar
):
    v1, v2 = await upstream("v1"), await upstream("v2")
    sidecar = await start_sidecar()
    breaker = {"failure_threshold": 1, "recovery_timeout_seconds": 60}
    first = weighted_config({"v1": 100, "v2": 0}, {"v1": [v1.address], "v2": ["127.0.0.1:9"]},
                            breaker=breaker, retries={"attempts": 0})
    await sidecar.wait_for_version(control_plane.publish("productpage", first))
    # Open v2's breaker by sending a request there through a Host that names the cluster... by
    # routing all traffic to v2 for one request (port 9 refuses connections).
    second = weighted_config({"v1": 0, "v2": 100}, {"v1": [v1.address], "v2": ["127.0.0.1:9"]},
                             breaker=breaker, retries={"attempts": 0})
    await sidecar.wait_for_version(control_plane.publish("productpage", second))
    async with sidecar.session.get(f"{sidecar.outbound}/", headers={"Host": "reviews"}) as r:
        assert r.status == 502
    breakers = sidecar.sidecar.outbound.breakers
    assert breakers["reviews/v2"].state is State.OPEN
    # Back to v1, with a changed split: the listener never restarted, v2's breaker stays open.
    third = weighted_config({"v1": 90, "v2": 10}, {"v1": [v1.address], "v2": ["127.0.0.1:9"]},
                            breaker=breaker, retries={"attempts": 0})
    await sidecar.wait_for_version(control_plane.publish("productpage", third))
    assert sidecar.sidecar.outbound.breakers["reviews/v2"] is breakers["reviews/v2"]
    assert breakers["reviews/v2"].state is State.OPEN
    statuses = collections.Counter()
    for _ in range(10):
        async with sidecar.session.get(f"{sidecar.outbound}/", headers={"Host": "reviews"}) as r:
            statuses[(r.status, r.headers.get("x-sidecarlab-breaker"))] += 1
    assert statuses == {(200, None): 9, (503, "open"): 1}


async def test_with_a_poll_interval_the_sidecar_polls_without_waiting_and_sees_a_change_one_interval_later(
    upstream, control_plane, start_sidecar
):
    v1 = await upstream("v1")
    control_plane.publish("productpage", weighted_config({"v1": 100}, {"v1": [v1.address]}))
    sidecar = await start_sidecar(poll_interval=0.2)
    await sidecar.wait_for_version(1)
    loop = asyncio.get_running_loop()
    published = loop.time()
    await sidecar.wait_for_version(control_plane.publish("productpage", weighted_config(
        {"v1": 100}, {"v1": [v1.address]}, retries={"attempts": 0})), timeout=2.0)
    # Seen at the next poll: at most one interval (plus scheduling) after the write.
    assert loop.time() - published < 0.2 + 0.15
    polls_before = len(control_plane.waits)
    await asyncio.sleep(0.5)
    # A steady pace, not a busy loop: about 0.5 / 0.2 polls, each asking the server not to hold.
    assert 1 <= len(control_plane.waits) - polls_before <= 4
    assert set(control_plane.waits) == {0.0}
