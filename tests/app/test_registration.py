"""The app registers with a node agent over a Unix socket and deregisters when it stops."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import grpc
import pytest
from aiohttp import web

from reference.app import create_app
from reference.app.registration import REGISTRATION, node_agent_registration
from reference.protos import nodeagent_pb2, nodeagent_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


class RecordingAgent(nodeagent_pb2_grpc.NodeAgentServicer):
    """A node agent that hands out one fixed listener and remembers every call."""

    def __init__(self, outbound_address: str) -> None:
        self.outbound_address = outbound_address
        self.calls: list[tuple[str, str]] = []

    async def Register(self, request, context):
        self.calls.append(("Register", f"{request.app_id}/{request.service}"))
        return nodeagent_pb2.RegisterReply(outbound_address=self.outbound_address, config_version=4)

    async def Deregister(self, request, context):
        self.calls.append(("Deregister", request.app_id))
        return nodeagent_pb2.DeregisterReply()


@pytest.fixture
async def start_agent(tmp_path):
    socket_path = tmp_path / "agent.sock"
    servers: list[grpc.aio.Server] = []

    async def start(outbound_address: str) -> tuple[RecordingAgent, grpc.aio.Server]:
        servicer = RecordingAgent(outbound_address)
        server = grpc.aio.server()
        nodeagent_pb2_grpc.add_NodeAgentServicer_to_server(servicer, server)
        server.add_insecure_port(f"unix://{socket_path}")
        await server.start()
        servers.append(server)
        return servicer, server

    start.socket_path = str(socket_path)
    yield start
    for server in servers:
        await server.stop(None)


async def test_the_app_registers_before_serving_and_deregisters_after(aiohttp_client, start_agent):
    agent, _ = await start_agent("127.0.0.1:15999")
    app = create_app("v1")
    app.cleanup_ctx.append(node_agent_registration(start_agent.socket_path, "reviews-abc", "reviews"))
    client = await aiohttp_client(app)
    assert agent.calls == [("Register", "reviews-abc/reviews")]
    assert app[REGISTRATION].outbound_address == "127.0.0.1:15999"
    assert app[REGISTRATION].config_version == 4
    assert (await client.get("/reviews/1")).status == 200

    await client.close()
    assert agent.calls[-1] == ("Deregister", "reviews-abc")


async def test_an_app_registers_again_with_an_agent_that_restarted(aiohttp_client, start_agent):
    _, old_server = await start_agent("127.0.0.1:15001")
    app = create_app("v1")
    app.cleanup_ctx.append(
        node_agent_registration(start_agent.socket_path, "a", "reviews", refresh=0.05)
    )
    await aiohttp_client(app)
    assert app[REGISTRATION].outbound_address == "127.0.0.1:15001"
    # A rolling update of the DaemonSet: the old agent goes, a new one knows no apps.
    await old_server.stop(None)
    await asyncio.sleep(0.2)  # a few refreshes fail while no agent is there

    new_agent, _ = await start_agent("127.0.0.1:15002")
    # Wide bound: a refresh is due every 0.05 s; a slow machine still gets there well within.
    for _ in range(100):
        if app[REGISTRATION].outbound_address == "127.0.0.1:15002":
            break
        await asyncio.sleep(0.05)
    assert app[REGISTRATION].outbound_address == "127.0.0.1:15002"
    assert ("Register", "a/reviews") in new_agent.calls


async def test_an_app_whose_agent_never_answers_fails_to_start(tmp_path):
    app = create_app("v1")
    missing = str(tmp_path / "nobody.sock")
    app.cleanup_ctx.append(node_agent_registration(missing, "a", "reviews", timeout=0.3))
    runner = web.AppRunner(app)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await runner.setup()
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await runner.cleanup()


async def test_the_app_process_announces_its_listener_and_deregisters_on_sigterm(start_agent):
    agent, _ = await start_agent("127.0.0.1:15999")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reference.app", "--port", "0", "--drain-delay", "0",
        "--node-agent", start_agent.socket_path, "--app-id", "reviews-7f9c",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        # Generous: an interpreter's first start on a busy machine is slow.
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        assert json.loads(line)["outbound"] == "127.0.0.1:15999"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert agent.calls == [("Register", "reviews-7f9c/reviews"), ("Deregister", "reviews-7f9c")]
