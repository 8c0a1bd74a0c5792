"""`python -m reference.controlplane` as a real process: ports, both APIs, SIGTERM, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import grpc
import pytest

from reference.protos import controlplane_pb2 as pb
from reference.protos import controlplane_pb2_grpc

from .conftest import AUTH, TOKEN, make_config

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 10  # seconds; imports on a cold, busy CI machine can take a few


async def launch(*args: str, token: str | None = TOKEN) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if k != "SIDECARLAB_TOKEN"}
    if token is not None:
        env["SIDECARLAB_TOKEN"] = token
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reference.controlplane", *args,
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


@pytest.fixture
async def controlplane(tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, dict]]:
    process = await launch(
        "--http-port", "0", "--grpc-port", "0", "--db", str(tmp_path / "cp.db"),
        "--drain-delay", "0", "--drain-grace", "5",
    )
    try:
        line = await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)
        assert line, (await process.stderr.read()).decode()
        yield process, json.loads(line)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_process_serves_both_apis_and_stops_cleanly_on_sigterm(controlplane):
    process, listening = controlplane
    assert listening["event"] == "listening"
    assert listening["component"] == "controlplane"
    base = f"http://127.0.0.1:{listening['http']}"
    config_url = f"{base}/v1/services/reviews/config"
    async with aiohttp.ClientSession() as session:
        async with session.put(config_url, json=make_config(), headers=AUTH) as response:
            assert response.status == 200
            assert await response.json() == {"service": "reviews", "version": 1}
        async with session.get(config_url) as response:
            assert (await response.json())["config"] == make_config()

        async with grpc.aio.insecure_channel(f"127.0.0.1:{listening['grpc']}") as channel:
            stub = controlplane_pb2_grpc.ControlPlaneStub(channel)
            watch = stub.Watch(pb.WatchRequest(node_id="node-a", services=["reviews"]))
            update = await asyncio.wait_for(watch.read(), 5)
            assert (update.service, update.version) == ("reviews", 1)
            # A long poll and a Watch stream are open when SIGTERM arrives.
            poll = asyncio.create_task(session.get(
                config_url, params={"wait": "30"}, headers={"If-None-Match": '"1"'}
            ))
            await asyncio.sleep(0.2)
            process.send_signal(signal.SIGTERM)
            response = await asyncio.wait_for(poll, 5)
            assert response.status == 503  # told to back off, not left hanging for 30 s
            response.release()
            # The stream ends with OK: the node reconnects elsewhere, nothing went wrong.
            assert await asyncio.wait_for(watch.read(), 5) is grpc.aio.EOF
            assert await watch.code() is grpc.StatusCode.OK

    assert await asyncio.wait_for(process.wait(), 10) == 0


async def test_without_a_token_the_process_refuses_to_start():
    process = await launch("--http-port", "0", "--grpc-port", "0", token=None)
    _, stderr = await asyncio.wait_for(process.communicate(), START_TIMEOUT)
    assert process.returncode == 2
    assert b"SIDECARLAB_TOKEN" in stderr
