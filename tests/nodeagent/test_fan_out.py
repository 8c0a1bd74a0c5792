"""One watch, many apps: each update is validated once and reaches every app of its service."""

from __future__ import annotations

import json

from reference.config_sync import load_cache
from reference.nodeagent.agent import NodeAgent
from reference.nodeagent.cache import ServiceCache
from reference.protos import controlplane_pb2
from reference.protos import nodeagent_pb2 as pb
from tests.nodeagent.conftest import call, config_for, feed


async def register(local_api, app_id: str, service: str) -> pb.RegisterReply:
    return await local_api.Register(pb.RegisterRequest(app_id=app_id, service=service))


async def versions(local_api) -> dict[str, int]:
    listed = await local_api.ListApps(pb.ListAppsRequest())
    return {app.app_id: app.config_version for app in listed.apps}


async def test_an_update_reaches_every_app_of_its_service_and_no_other(
    agent, local_api, upstream, http
):
    reviews = await upstream("reviews-v1")
    pages = [await register(local_api, f"productpage-{i}", "productpage") for i in range(3)]
    ratings = await register(local_api, "ratings-1", "ratings")

    ack = await feed(agent, "productpage", 4, config_for(reviews.address))

    assert ack.accepted and ack.error_detail == ""
    assert (ack.node_id, ack.service, ack.version, ack.nonce) == (
        "node-test", "productpage", 4, "n4"
    )
    assert await versions(local_api) == {
        "productpage-0": 4, "productpage-1": 4, "productpage-2": 4, "ratings-1": 0,
    }
    for page in pages:
        assert (await call(http, page.outbound_address))[0] == 200
    status, body = await call(http, ratings.outbound_address)
    assert status == 503 and "no config yet" in body


async def test_an_app_registering_later_starts_with_the_current_config(
    agent, local_api, upstream, http
):
    reviews = await upstream("reviews-v1")
    await register(local_api, "productpage-1", "productpage")
    await feed(agent, "productpage", 2, config_for(reviews.address))

    late = await register(local_api, "productpage-2", "productpage")

    assert late.config_version == 2
    assert (await call(http, late.outbound_address))[0] == 200


async def test_an_invalid_update_is_nacked_and_the_last_good_config_keeps_serving(
    agent, local_api, upstream, http
):
    reviews = await upstream("reviews-v1")
    page = await register(local_api, "productpage-1", "productpage")
    await feed(agent, "productpage", 1, config_for(reviews.address))
    broken = config_for(reviews.address)
    broken["clusters"]["reviews"]["v1"] = ["no-port-here"]

    nack = await feed(agent, "productpage", 2, broken)

    assert not nack.accepted
    assert nack.error_detail.startswith("clusters.reviews.v1[0]"), nack.error_detail
    assert await versions(local_api) == {"productpage-1": 1}
    assert (await call(http, page.outbound_address))[0] == 200


async def test_config_json_that_is_not_a_json_object_is_nacked(agent, local_api):
    await register(local_api, "productpage-1", "productpage")

    not_json = await feed(agent, "productpage", 1, "{not json")
    a_list = await feed(agent, "productpage", 2, "[1, 2]")

    assert not not_json.accepted and not_json.error_detail.startswith("config_json:")
    assert not a_list.accepted and "JSON object" in a_list.error_detail


async def test_a_version_the_node_already_serves_is_acked_without_reapplying(
    agent, local_api, upstream
):
    reviews = await upstream("reviews-v1")
    await register(local_api, "productpage-1", "productpage")
    await feed(agent, "productpage", 3, config_for(reviews.address))
    proxy_config = agent.registry.get("productpage-1").proxy.config

    again = await feed(agent, "productpage", 3, config_for(reviews.address))
    older = await feed(agent, "productpage", 2, config_for("127.0.0.1:9"))

    assert again.accepted and older.accepted
    assert agent.registry.get("productpage-1").proxy.config is proxy_config


async def test_an_update_for_a_service_no_local_app_needs_is_ignored(agent, local_api):
    await register(local_api, "productpage-1", "productpage")
    update = controlplane_pb2.ConfigUpdate(service="details", version=1, nonce="x",
                                           config_json=json.dumps(config_for("127.0.0.1:9")))
    assert await agent.watch.handle(update) is None


async def test_applied_updates_are_cached_on_disk_and_rejected_ones_are_not(
    agent: NodeAgent, local_api, upstream
):
    reviews = await upstream("reviews-v1")
    await register(local_api, "productpage-1", "productpage")
    await feed(agent, "productpage", 1, config_for(reviews.address))
    await feed(agent, "productpage", 2, {"routes": {}})

    cached = load_cache(ServiceCache(agent.settings.cache_dir).path_for("productpage"))
    assert cached is not None and cached.version == 1


async def test_admin_config_shows_per_service_versions_and_the_last_rejection(
    agent, local_api, upstream, http
):
    reviews = await upstream("reviews-v1")
    await register(local_api, "productpage-1", "productpage")
    await register(local_api, "ratings-1", "ratings")
    await feed(agent, "productpage", 1, config_for(reviews.address))
    await feed(agent, "productpage", 2, {"routes": {}})

    async with http.get(f"http://127.0.0.1:{agent.admin_port}/config") as response:
        view = await response.json()

    assert view["node_id"] == "node-test"
    assert view["services"]["productpage"]["version"] == 1
    assert view["services"]["productpage"]["rejected"]["version"] == 2
    assert view["services"]["ratings"] == {"version": None, "rejected": None}
    assert [app["app_id"] for app in view["apps"]] == ["productpage-1", "ratings-1"]
    assert view["watch"]["services"] == ["productpage", "ratings"]
