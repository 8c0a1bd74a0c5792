"""The open-loop client against a real server on loopback and a port nobody listens on."""

from __future__ import annotations

from aiohttp import web

from bench.pacer import Target, paced_load
from bench.procs import free_port


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def test_every_request_is_kept_as_a_sample_on_schedule_with_its_target_and_status():
    app = web.Application()
    app.router.add_get("/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    good = Target(runner.addresses[0][1], "upstream")
    closed = Target(free_port(), "upstream")
    try:
        result = await paced_load([good, closed], rate=100, seconds=0.2)
    finally:
        await runner.cleanup()
    assert result.scheduled == len(result.samples) == 20
    assert [s.target for s in result.samples] == [0, 1] * 10
    # Due times follow the timetable (k / rate), not the answers.
    assert [round(s.due, 3) for s in result.samples] == [k / 100 for k in range(20)]
    assert {s.status for s in result.samples if s.target == 0} == {200}
    assert {s.status for s in result.samples if s.target == 1} == {0}
    assert result.ok == result.errors == 10
    assert all(s.latency_ms > 0 for s in result.samples)
