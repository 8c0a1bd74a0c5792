"""`python -m reference.sidecar` as a real process: flags, the listening line, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from reference.config_sync import Snapshot, save_cache
from reference.sidecar.__main__ import main

from .conftest import single_config

ROOT = Path(__file__).resolve().parents[2]


def test_help_describes_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--service", "--app-address", "--inbound-port", "--outbound-port",
                 "--admin-port", "--control-plane", "--cache"):
        assert flag in out


async def start_process(*args: str) -> tuple[asyncio.subprocess.Process, dict]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "reference.sidecar", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    line = await asyncio.wait_for(process.stdout.readline(), 10)
    if not line:
        raise AssertionError((await process.stderr.read()).decode())
    return process, json.loads(line)


async def test_sigterm_under_load_drains_without_losing_a_request_and_exits_0(
    upstream, control_plane, tmp_path
):
    async def slow_ok(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)  # keeps requests in flight when SIGTERM arrives
        return web.Response(text="ok")

    app = await upstream("app", slow_ok)
    control_plane.publish("productpage", single_config(app.address))
    process, listening = await start_process(
        "--service", "productpage", "--app-address", app.address,
        "--inbound-host", "127.0.0.1", "--inbound-port", "0", "--outbound-port", "0",
        "--admin-port", "0", "--control-plane", control_plane.url,
        "--drain-delay", "0.5", "--drain-grace", "5", "--wait", "1",
    )
    assert listening["event"] == "listening" and listening["component"] == "sidecar"
    url = f"http://127.0.0.1:{listening['inbound']}/reviews/1"
    outcomes: list[str] = []
    drain_seen: list[float] = []

    async def client() -> None:
        async with aiohttp.ClientSession() as session:
            while not drain_seen or time.monotonic() < drain_seen[0] + 0.25:
                # A load balancer stops sending within the drain delay once readiness fails;
                # these clients stop a quarter second after the first `Connection: close`.
                try:
                    async with session.get(url) as response:
                        await response.read()
                        outcomes.append("ok" if response.status == 200 else str(response.status))
                        if response.headers.get("Connection") == "close" and not drain_seen:
                            drain_seen.append(time.monotonic())
                except aiohttp.ClientError as error:
                    outcomes.append(type(error).__name__)

    try:
        clients = [asyncio.create_task(client()) for _ in range(8)]
        await asyncio.sleep(0.4)
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*clients), 10)
        code = await asyncio.wait_for(process.wait(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert code == 0, (await process.stderr.read()).decode()
    assert drain_seen, "no response announced the drain"
    assert outcomes.count("ok") > 40
    assert [outcome for outcome in outcomes if outcome != "ok"] == []


async def test_the_cached_config_serves_while_the_control_plane_is_down(upstream, tmp_path):
    v1 = await upstream("v1")
    cache = tmp_path / "productpage.json"
    save_cache(cache, Snapshot(7, single_config(v1.address)))
    process, listening = await start_process(
        "--service", "productpage", "--inbound-port", "0", "--outbound-port", "0",
        "--admin-port", "0", "--control-plane", "http://127.0.0.1:9", "--cache", str(cache),
        "--drain-delay", "0", "--drain-grace", "1",
    )
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{listening['outbound']}/",
                                   headers={"Host": "reviews"}) as r:
                assert r.status == 200
            async with session.get(f"http://127.0.0.1:{listening['admin']}/config") as r:
                assert (await r.json())["version"] == 7
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
