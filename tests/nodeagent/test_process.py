"""The node agent as a real process: the listening line, then SIGTERM drains and exits 0."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web

from reference.nodeagent.__main__ import main
from reference.protos import nodeagent_pb2 as pb
from reference.protos import nodeagent_pb2_grpc
from tests.nodeagent.conftest import config_for, free_address

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def slow_upstream() -> AsyncIterator[str]:
    """An upstream that takes 0.5 s to answer, so a request is in flight during the drain."""

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.json_response({"upstream": "slow"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", slow)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def start_agent(
    tmp_path: Path, *extra: str
) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reference.nodeagent",
        "--node-id", "node-proc", "--socket", str(tmp_path / "agent.sock"),
        "--admin-port", "0", "--control-plane-grpc", free_address(),
        "--cache-dir", str(tmp_path / "cache"), *extra,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        line = await asyncio.wait_for(process.stdout.readline(), timeout=5)
        return process, json.loads(line)
    except BaseException:
        process.kill()
        await process.wait()
        raise


async def test_sigterm_drains_every_app_listener_and_exits_zero(tmp_path: Path, slow_upstream: str):
    # A cached config, so the app's listener can route without a control plane.
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "productpage.json").write_text(
        json.dumps({"version": 1, "config": config_for(slow_upstream)}))
    process, listening = await start_agent(tmp_path, "--drain-delay", "0.2", "--drain-grace", "3")
    try:
        assert listening == {"event": "listening", "component": "nodeagent",
                             "socket": str(tmp_path / "agent.sock"), "grpc": None,
                             "admin": listening["admin"]}
        async with grpc.aio.insecure_channel(f"unix:{tmp_path / 'agent.sock'}") as channel:
            stub = nodeagent_pb2_grpc.NodeAgentStub(channel)
            reply = await stub.Register(pb.RegisterRequest(app_id="p1", service="productpage"))
        assert reply.config_version == 1

        async with aiohttp.ClientSession() as http:
            in_flight = asyncio.create_task(_get(http, f"http://{reply.outbound_address}/r/1"))
            await asyncio.sleep(0.1)  # the request is now waiting on the slow upstream
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.05)
            async with http.get(f"http://127.0.0.1:{listening['admin']}/readyz") as ready:
                assert ready.status == 503, "readiness fails as soon as the drain starts"
            assert await in_flight == 200, "the request in flight when SIGTERM came finished"

        assert await asyncio.wait_for(process.wait(), timeout=5) == 0
        assert not (tmp_path / "agent.sock").exists()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def _get(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url, headers={"Host": "reviews"}) as response:
        await response.read()
        return response.status


async def test_sigterm_with_no_apps_exits_zero_at_once(tmp_path: Path):
    process, _ = await start_agent(tmp_path)
    try:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=5) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_help_describes_the_flags(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--node-id", "--control-plane-grpc", "--socket", "--grpc-port", "--admin-port",
                 "--cache-dir", "--heartbeat-interval"):
        assert flag in text


def test_a_socket_path_that_is_taken_by_a_file_fails_with_exit_code_1(tmp_path: Path):
    (tmp_path / "agent.sock").write_text("not a socket")
    assert main(["--socket", str(tmp_path / "agent.sock"), "--admin-port", "0",
                 "--control-plane-grpc", free_address()]) == 1
