"""The gRPC API on a real grpc.aio server on 127.0.0.1, called through a real channel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from reference.controlplane.grpc_service import SERVICE_NAME, create_server, mark_serving
from reference.controlplane.hub import ConfigHub
from reference.protos import controlplane_pb2 as pb
from reference.protos import controlplane_pb2_grpc

from .conftest import make_config


@pytest.fixture
async def channel(hub: ConfigHub, registry) -> AsyncIterator[grpc.aio.Channel]:
    server, port, health = create_server(hub, registry, "127.0.0.1:0")
    await server.start()
    await mark_serving(health)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    await server.stop(None)


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> controlplane_pb2_grpc.ControlPlaneStub:
    return controlplane_pb2_grpc.ControlPlaneStub(channel)


class Updates:
    """A Watch call read in the background, so a test can wait for the next update or for none."""

    def __init__(self, call: grpc.aio.UnaryStreamCall) -> None:
        self.call = call
        self._queue: asyncio.Queue[pb.ConfigUpdate] = asyncio.Queue()
        self.ended = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for update in self.call:
            await self._queue.put(update)

    async def next(self) -> pb.ConfigUpdate:
        return await asyncio.wait_for(self._queue.get(), timeout=5)

    async def none_within(self, seconds: float = 0.2) -> bool:
        await asyncio.sleep(seconds)
        return self._queue.empty()


def watch(stub, services, known=None, node_id="node-a") -> Updates:
    request = pb.WatchRequest(node_id=node_id, services=services, known_versions=known or {})
    return Updates(stub.Watch(request))


async def test_on_connect_a_watch_gets_every_service_newer_than_its_known_versions(hub, stub):
    stored = [("reviews", "v1"), ("reviews", "v2"), ("ratings", "v1"), ("details", "v1")]
    for service, subset in stored:
        await hub.put(service, json.dumps(make_config(subset)))
    updates = watch(stub, ["reviews", "ratings", "details", "no-config-yet"], {"reviews": 2})
    first, second = await updates.next(), await updates.next()
    assert {(first.service, first.version), (second.service, second.version)} == {
        ("details", 1), ("ratings", 1)
    }
    assert await updates.none_within(), "reviews v2 is known already; nothing else exists"
    updates.call.cancel()


async def test_each_new_version_is_pushed_as_it_is_stored_with_a_fresh_nonce(hub, stub):
    await hub.put("reviews", json.dumps(make_config("v1")))
    updates = watch(stub, ["reviews", "ratings"])
    first = await updates.next()
    assert (first.service, first.version) == ("reviews", 1)

    await hub.put("reviews", json.dumps(make_config("v2")))
    second = await updates.next()
    assert (second.service, second.version) == ("reviews", 2)
    assert json.loads(second.config_json) == make_config("v2")
    assert second.nonce and second.nonce != first.nonce

    await hub.put("ratings", json.dumps(make_config("v1")))  # its first version, after connect
    third = await updates.next()
    assert (third.service, third.version) == ("ratings", 1)
    assert await updates.none_within()
    updates.call.cancel()


async def test_acks_and_nacks_are_visible_in_the_status_api(hub, stub, make_client):
    client = await make_client()
    await hub.put("reviews", json.dumps(make_config("v1")))
    updates = watch(stub, ["reviews"])
    update = await updates.next()
    reply = await stub.Ack(pb.AckRequest(
        node_id="node-a", service="reviews", version=update.version, nonce=update.nonce,
        accepted=True,
    ))
    assert reply.recorded
    await hub.put("reviews", json.dumps(make_config("v2")))
    update = await updates.next()
    await stub.Ack(pb.AckRequest(
        node_id="node-a", service="reviews", version=update.version, nonce=update.nonce,
        accepted=False, error_detail="clusters.reviews.v2[0]: port out of range",
    ))
    updates.call.cancel()

    response = await client.get("/v1/services/reviews/status")
    [node] = (await response.json())["nodes"]
    assert (node["node_id"], node["state"], node["version"]) == ("node-a", "NACK", 2)
    assert node["nonce"] == update.nonce
    assert node["error_detail"] == "clusters.reviews.v2[0]: port out of range"
    assert node["applied_version"] == 1  # the NACK kept it on the version it had


async def test_an_ack_for_a_version_that_was_never_stored_is_not_found(hub, stub):
    await hub.put("reviews", json.dumps(make_config()))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Ack(
            pb.AckRequest(node_id="n", service="reviews", version=9, nonce="x", accepted=True)
        )
    assert error.value.code() is grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    "request_",
    [
        pb.WatchRequest(node_id="", services=["reviews"]),
        pb.WatchRequest(node_id="node-a", services=[]),
        pb.WatchRequest(node_id="node-a", services=["Not_A_Label"]),
    ],
    ids=["no node id", "no services", "bad service name"],
)
async def test_a_watch_with_bad_arguments_fails_with_invalid_argument(stub, request_):
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in stub.Watch(request_):
            pass
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_heartbeat_registers_the_node_and_sets_its_pace(stub, make_client):
    client = await make_client()
    reply = await stub.Heartbeat(pb.HeartbeatRequest(
        node_id="node-a", hostname="host-a", facts={"apps": "2"}, applied_versions={"reviews": 4},
    ))
    assert reply.interval_ms == 5000  # a third of suspect_after (15 s)
    response = await client.get("/v1/nodes")
    [node] = (await response.json())["nodes"]
    assert (node["node_id"], node["hostname"], node["health"]) == ("node-a", "host-a", "healthy")
    assert (node["facts"], node["applied_versions"]) == ({"apps": "2"}, {"reviews": 4})


async def test_a_heartbeat_with_too_many_facts_is_refused(stub, registry):
    facts = {f"k{i}": "v" for i in range(100)}
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await stub.Heartbeat(pb.HeartbeatRequest(node_id="node-a", facts=facts))
    assert error.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert registry.nodes() == []


async def test_the_standard_health_service_reports_serving(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_shutting_down_ends_watch_streams_with_ok_so_nodes_reconnect(hub, stub):
    updates = watch(stub, ["reviews"])
    await asyncio.sleep(0.1)  # let the stream open
    hub.close()
    await asyncio.wait_for(updates.ended, timeout=5)
    assert await updates.call.code() is grpc.StatusCode.OK


async def test_a_cancelled_watch_leaves_no_subscription_behind(hub, stub):
    updates = watch(stub, ["reviews", "ratings"])
    await asyncio.sleep(0.1)
    assert hub.watcher_count() == 1
    updates.call.cancel()
    for _ in range(50):  # the server learns of the cancel asynchronously
        if hub.watcher_count() == 0:
            break
        await asyncio.sleep(0.02)
    assert hub.watcher_count() == 0
