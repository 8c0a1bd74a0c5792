"""The local API over a real Unix domain socket: Register, Deregister, ListApps."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from pathlib import Path

import aiohttp
import grpc
import pytest

from reference.nodeagent.agent import NodeAgent
from reference.nodeagent.local_api import LocalApi
from reference.protos import nodeagent_pb2 as pb
from reference.protos import nodeagent_pb2_grpc
from tests.nodeagent.conftest import settings_for


async def test_register_gives_each_app_its_own_loopback_listener_and_list_shows_them(local_api):
    first = await local_api.Register(
        pb.RegisterRequest(app_id="productpage-1", service="productpage")
    )
    second = await local_api.Register(pb.RegisterRequest(app_id="ratings-1", service="ratings"))

    assert first.outbound_address.startswith("127.0.0.1:")
    assert second.outbound_address.startswith("127.0.0.1:")
    assert first.outbound_address != second.outbound_address
    assert first.config_version == 0, "no config yet: the control plane is down, the cache empty"
    listed = await local_api.ListApps(pb.ListAppsRequest())
    assert [(app.app_id, app.service, app.outbound_address) for app in listed.apps] == [
        ("productpage-1", "productpage", first.outbound_address),
        ("ratings-1", "ratings", second.outbound_address),
    ]


async def test_registering_the_same_app_again_returns_the_same_listener(local_api):
    request = pb.RegisterRequest(app_id="productpage-1", service="productpage")
    first = await local_api.Register(request)
    again = await local_api.Register(request)

    assert again.outbound_address == first.outbound_address
    assert len((await local_api.ListApps(pb.ListAppsRequest())).apps) == 1


async def test_deregister_closes_the_apps_listener_and_removes_it_from_the_list(local_api, http):
    reply = await local_api.Register(
        pb.RegisterRequest(app_id="productpage-1", service="productpage")
    )
    url = f"http://{reply.outbound_address}/"
    async with http.get(url, headers={"Host": "reviews"}) as response:
        assert response.status == 503  # served by the app's proxy: no config yet

    await local_api.Deregister(pb.DeregisterRequest(app_id="productpage-1"))

    assert list((await local_api.ListApps(pb.ListAppsRequest())).apps) == []
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(url, headers={"Host": "reviews"}):
            pass


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (pb.RegisterRequest(app_id="", service="productpage"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.RegisterRequest(app_id="a1", service="Not_A_Label"), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.RegisterRequest(app_id="a1", service=""), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.RegisterRequest(app_id="a\n1", service="productpage"),
         grpc.StatusCode.INVALID_ARGUMENT),
    ],
    ids=["empty app_id", "service not a DNS label", "empty service", "control character"],
)
async def test_malformed_registrations_are_refused_with_invalid_argument(local_api, request_, code):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await local_api.Register(request_)
    assert caught.value.code() is code


async def test_the_same_app_id_for_another_service_is_a_failed_precondition(local_api):
    await local_api.Register(pb.RegisterRequest(app_id="app-1", service="productpage"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await local_api.Register(pb.RegisterRequest(app_id="app-1", service="ratings"))
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "productpage" in caught.value.details()


async def test_deregistering_an_unknown_app_is_not_found(local_api):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await local_api.Deregister(pb.DeregisterRequest(app_id="nobody"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND


async def test_the_socket_is_readable_and_writable_by_owner_and_group_only(agent: NodeAgent):
    mode = os.stat(agent.local_api.socket_path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


async def test_the_socket_folder_is_created_and_the_socket_removed_at_stop(tmp_path: Path):
    settings = settings_for(tmp_path, socket_path=str(tmp_path / "run" / "agent.sock"))
    async with NodeAgent(settings) as agent:
        assert agent.local_api.socket_path.exists()
    assert not (tmp_path / "run" / "agent.sock").exists()


async def test_a_stale_socket_left_by_a_crash_is_replaced(tmp_path: Path):
    path = tmp_path / "agent.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # bound, never listening, file left behind: what a crash leaves

    async with NodeAgent(settings_for(tmp_path)) as agent:
        async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
            stub = nodeagent_pb2_grpc.NodeAgentStub(channel)
            assert list((await stub.ListApps(pb.ListAppsRequest())).apps) == []


async def test_a_second_agent_does_not_steal_a_live_socket(agent: NodeAgent, tmp_path: Path):
    second = NodeAgent(settings_for(tmp_path))
    with pytest.raises(OSError, match="another process"):
        async with second:
            pass
    assert agent.local_api.socket_path.exists()


async def test_a_file_that_is_not_a_socket_is_never_replaced(tmp_path: Path):
    path = tmp_path / "agent.sock"
    path.write_text("precious")
    with pytest.raises(FileExistsError):
        async with NodeAgent(settings_for(tmp_path)):
            pass
    assert path.read_text() == "precious"


async def test_loopback_tcp_serves_the_same_api_when_asked(tmp_path: Path):
    async with NodeAgent(settings_for(tmp_path, socket_path=None, grpc_port=0)) as agent:
        assert agent.local_api.port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{agent.local_api.port}") as channel:
            stub = nodeagent_pb2_grpc.NodeAgentStub(channel)
            reply = await stub.Register(pb.RegisterRequest(app_id="a1", service="productpage"))
        assert reply.outbound_address.startswith("127.0.0.1:")


async def test_a_second_agent_cannot_share_the_loopback_port(tmp_path: Path):
    async with NodeAgent(settings_for(tmp_path, socket_path=None, grpc_port=0)) as first:
        second = NodeAgent(settings_for(tmp_path, socket_path=None, grpc_port=first.local_api.port))
        with pytest.raises(OSError, match="cannot bind"):
            async with second:
                pass


def test_a_socket_path_too_long_for_the_kernel_is_refused_up_front(tmp_path: Path):
    api = LocalApi(None, socket_path=tmp_path / ("x" * 120), port=None)  # type: ignore[arg-type]
    with pytest.raises(OSError, match="choose a shorter one"):
        asyncio.run(api.start())
