"""Graded tests for exercise 04: drain an aiohttp server while Kubernetes terminates its pod.

Every test runs a real server on 127.0.0.1 (port 0) and real clients; the delays and grace
periods are tens to hundreds of milliseconds so the whole file runs in about a second and a half.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from grader import learner

drain = learner(__file__, "drain")

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = aiohttp.ClientTimeout(total=5)
# What a client sees when nobody listens any more, or when the server drops its connection.
REFUSED = (aiohttp.ClientConnectorError, aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)


class Server:
    """A real aiohttp server with the controller installed and a few handlers to drain."""

    def __init__(self, controller) -> None:
        self.controller = controller
        self.entered = 0  # counted by the test's own handlers, not by the code under test
        self.cancelled: list[str] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> Server:
        app = web.Application()
        app.router.add_get("/fast", self.fast)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/stuck", self.slow)
        self.controller.install(app)
        # A short shutdown_timeout so an unfinished drain never holds the test's cleanup.
        self.runner = web.AppRunner(app, shutdown_timeout=0.2)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = "http://127.0.0.1:%d" % self.runner.addresses[0][1]
        return self

    async def fast(self, request: web.Request) -> web.Response:
        return web.Response(text="fast")

    async def slow(self, request: web.Request) -> web.Response:
        self.entered += 1
        try:
            await asyncio.sleep(float(request.query.get("s", "0.15")))
        except asyncio.CancelledError:
            self.cancelled.append(request.path)
            raise
        return web.Response(text="slow")

    async def wait_entered(self, count: int) -> None:
        """Wait until `count` slow handlers are running, so the drain starts with them in flight."""
        for _ in range(200):
            if self.entered >= count:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"only {self.entered} of {count} slow requests reached the handler")


@pytest.fixture
async def start_server():
    servers: list[Server] = []

    async def start(**settings) -> Server:
        server = Server(drain.DrainController(**settings))
        servers.append(server)
        return await server.start()

    yield start
    for server in servers:
        if server.runner is not None:
            await server.runner.cleanup()


async def fetch(url: str) -> tuple[int, str, str]:
    """GET `url` on a connection of its own; return status, Connection header and body."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.get(url) as response:
            return response.status, response.headers.get("Connection", ""), await response.text()


async def drain_of(server: Server):
    """Run the controller's drain on the server's runner, bounded so a hang fails fast."""
    return await asyncio.wait_for(server.controller.drain(server.runner), timeout=5)


async def outcomes(*requests: asyncio.Task, timeout: float = 1.0) -> list:
    """Each request's answer or exception, or "no answer yet" if it is still waiting."""
    _, pending = await asyncio.wait(requests, timeout=timeout)
    for request in pending:
        request.cancel()
    await asyncio.gather(*requests, return_exceptions=True)
    return [
        "no answer yet" if r.cancelled() else (r.exception() or r.result()) for r in requests
    ]


# Step 1 ------------------------------------------------------------------------------------


@pytest.mark.task(taskno=1)
async def test_readiness_and_liveness_are_200_before_a_drain(start_server):
    server = await start_server(delay=0.05, grace=1.0)
    ready, _, _ = await fetch(server.url + "/readyz")
    live, _, _ = await fetch(server.url + "/healthz")
    assert ready == 200, f"GET /readyz must answer 200 before any drain; it answered {ready}"
    assert live == 200, f"GET /healthz must answer 200; it answered {live}"
    assert server.controller.draining is False, "`draining` must be False before start_drain()"


@pytest.mark.task(taskno=1, points=2)
async def test_start_drain_fails_readiness_at_once_and_keeps_liveness(start_server):
    server = await start_server(delay=0.05, grace=1.0)
    server.controller.start_drain()
    server.controller.start_drain()  # a SIGTERM after the preStop hook calls it again
    ready, _, _ = await fetch(server.url + "/readyz")
    live, _, _ = await fetch(server.url + "/healthz")
    assert server.controller.draining is True, "`draining` must be True after start_drain()"
    assert ready == 503, (
        f"GET /readyz must answer 503 as soon as the drain starts, so Kubernetes takes the "
        f"endpoint out of the Service; it answered {ready}"
    )
    assert live == 200, (
        f"GET /healthz must stay 200 while draining, or the kubelet restarts the container "
        f"mid-drain; it answered {live}"
    )


@pytest.mark.task(taskno=1)
async def test_prestop_hook_on_the_admin_app_starts_the_drain(start_server):
    server = await start_server(delay=0.05, grace=1.0)
    admin = web.AppRunner(server.controller.admin_app())
    await admin.setup()
    try:
        await web.TCPSite(admin, "127.0.0.1", 0).start()
        admin_url = "http://127.0.0.1:%d" % admin.addresses[0][1]
        async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
            async with session.post(admin_url + "/drain") as response:
                status = response.status
        ready, _, _ = await fetch(server.url + "/readyz")
    finally:
        await admin.cleanup()
    assert status == 202, f"POST /drain on admin_app() must answer 202; it answered {status}"
    assert ready == 503, f"after POST /drain, GET /readyz must answer 503; it answered {ready}"


# Step 2 ------------------------------------------------------------------------------------


@pytest.mark.task(taskno=2, points=2)
async def test_new_requests_are_served_during_the_delay(start_server):
    server = await start_server(delay=0.15, grace=1.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    draining = asyncio.create_task(drain_of(server))
    for _ in range(100):  # let drain() run up to its first await
        if server.controller.draining or draining.done():
            break
        await asyncio.sleep(0)
    if draining.done():
        draining.result()  # re-raise what drain() raised
    assert server.controller.draining, "drain() must call start_drain() first"
    status, _, body = await fetch(server.url + "/fast")
    assert status == 200 and body == "fast", (
        f"a new request during the delay must still be served (endpoint removal lags behind "
        f"readiness); it got {status} {body!r}"
    )
    assert not draining.done(), "drain() returned before `delay` was over; sleep first"
    await draining
    # Wide bound: asyncio may wake a sleep a clock tick early, never much earlier.
    assert loop.time() - started >= 0.13, "drain() must not close the listener before `delay`"


@pytest.mark.task(taskno=2, points=2)
async def test_new_connections_are_refused_after_the_delay(start_server):
    server = await start_server(delay=0.05, grace=1.0)
    await drain_of(server)
    with pytest.raises(REFUSED):
        await fetch(server.url + "/fast")
        pytest.fail(
            "after the delay the listener must be closed (stop the runner's sites), "
            "but a new connection was still served"
        )


# Step 3 ------------------------------------------------------------------------------------


@pytest.mark.task(taskno=3)
async def test_in_flight_counts_requests_inside_handlers(start_server):
    server = await start_server(delay=0.05, grace=1.0)
    assert server.controller.in_flight == 0, "`in_flight` must be 0 with no requests"
    requests = [asyncio.create_task(fetch(server.url + "/slow?s=0.1")) for _ in range(2)]
    await server.wait_entered(2)
    counted = server.controller.in_flight
    await asyncio.gather(*requests)
    assert counted == 2, f"`in_flight` must be 2 while two handlers run; it was {counted}"
    assert server.controller.in_flight == 0, "`in_flight` must drop back to 0 when they finish"


@pytest.mark.task(taskno=3, points=3)
async def test_in_flight_requests_all_complete_when_they_fit_in_the_grace(start_server):
    server = await start_server(delay=0.02, grace=1.0)
    requests = [asyncio.create_task(fetch(server.url + "/slow?s=0.15")) for _ in range(5)]
    await server.wait_entered(5)
    result = await drain_of(server)
    answers = await outcomes(*requests)
    lost = [a for a in answers if not isinstance(a, tuple) or a[0] != 200]
    assert not lost, (
        f"every request in flight when the drain started must complete once the listener "
        f"closes; {len(lost)} of 5 were lost: {lost[:2]}"
    )
    assert result.completed == 5, f"DrainResult.completed must be 5; it is {result.completed}"
    assert result.cancelled == 0, f"nothing outlived the grace; {result.cancelled} were cancelled"
    assert result.elapsed < 0.8, (
        f"drain() must return as soon as the last request finishes, not wait out the whole "
        f"grace; it took {result.elapsed:.3f}s for 0.15s of work"
    )


@pytest.mark.task(taskno=3, points=2)
async def test_responses_sent_while_draining_carry_connection_close(start_server):
    server = await start_server(delay=0.05, grace=1.0)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.get(server.url + "/fast") as response:
            before = response.headers.get("Connection", "")
        server.controller.start_drain()
        async with session.get(server.url + "/fast") as response:
            during = response.headers.get("Connection", "")
        async with session.get(server.url + "/missing") as response:
            missing_status, missing = response.status, response.headers.get("Connection", "")
    assert before.lower() != "close", "before the drain, responses must keep the connection alive"
    assert during.lower() == "close", (
        f"while draining, responses must carry `Connection: close` so keep-alive clients "
        f"reconnect to another endpoint; the header was {during!r}"
    )
    assert missing_status == 404 and missing.lower() == "close", (
        f"a 404 from the router must carry `Connection: close` too while draining (set it in "
        f"on_response_prepare, which sees every response); it was {missing_status} {missing!r}"
    )


# Step 4 ------------------------------------------------------------------------------------


@pytest.mark.task(taskno=4, points=3)
async def test_a_handler_that_outlives_the_grace_is_cancelled_and_reported(start_server, caplog):
    caplog.set_level(logging.INFO)
    server = await start_server(delay=0.02, grace=0.2)
    stuck = asyncio.create_task(fetch(server.url + "/stuck?s=10"))
    quick = asyncio.create_task(fetch(server.url + "/slow?s=0.05"))
    await server.wait_entered(2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await drain_of(server)
    took = loop.time() - started
    stuck_answer, quick_answer = await outcomes(stuck, quick)

    # Wide bounds: the point is that drain() neither gives up early nor waits for the 10 s
    # handler; a loaded machine can add a few hundred milliseconds, never ten seconds.
    assert 0.15 <= took < 1.5, f"drain() must return at the deadline (0.2s); it took {took:.3f}s"
    assert result.cancelled_requests == ("GET /stuck",), (
        f"DrainResult.cancelled_requests must name what the deadline cut off, as "
        f"'METHOD /path'; it is {result.cancelled_requests!r}"
    )
    assert result.cancelled == 1, f"DrainResult.cancelled must be 1; it is {result.cancelled}"
    assert result.completed == 1, (
        f"the quick request finished while draining; completed is {result.completed}"
    )
    assert server.cancelled == ["/stuck"], (
        "the stuck handler must be cancelled (task.cancel()), not left running"
    )
    assert isinstance(stuck_answer, REFUSED), (
        f"the cancelled request must not get an answer; it got {stuck_answer!r}"
    )
    assert isinstance(quick_answer, tuple) and quick_answer[0] == 200, (
        f"the quick request must complete; it got {quick_answer!r}"
    )
    warned = [
        r for r in caplog.records if r.levelno >= logging.WARNING and "/stuck" in r.getMessage()
    ]
    assert warned, "log a warning naming each cancelled request, e.g. 'cancelling GET /stuck'"


# Step 5 ------------------------------------------------------------------------------------


@pytest.mark.task(taskno=5)
async def test_serve_drains_and_cleans_up_once_the_drain_starts():
    app = web.Application()
    controller = drain.DrainController(delay=0.02, grace=1.0)
    ports: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(
        drain.serve(
            app, controller, host="127.0.0.1", port=0, signals=(),
            on_started=lambda runner: ports.set_result(runner.addresses[0][1]),
        )
    )
    try:
        done, _ = await asyncio.wait(
            {serving, ports}, timeout=5, return_when=asyncio.FIRST_COMPLETED
        )
        if serving in done:
            serving.result()  # re-raise what serve() raised
            raise AssertionError("serve() returned before any drain started")
        assert ports in done, "serve() must call on_started(runner) once it listens"
        url = f"http://127.0.0.1:{ports.result()}"
        ready, _, _ = await fetch(url + "/readyz")
        assert ready == 200, f"serve() must install the controller's /readyz; it answered {ready}"
        assert not serving.done(), "serve() must keep serving until a drain starts"
        controller.start_drain()
        result = await asyncio.wait_for(serving, timeout=5)
    finally:
        if not serving.done():
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
    assert result.cancelled == 0, f"serve() must return the drain's DrainResult, not {result!r}"
    with pytest.raises(REFUSED):
        await fetch(url + "/readyz")
        pytest.fail("after serve() returns, nothing may listen on its port any more")


CHILD = """
import asyncio, importlib.util, json, sys
from aiohttp import web

spec = importlib.util.spec_from_file_location("graded_drain", sys.argv[1])
drain = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = drain
spec.loader.exec_module(drain)

async def slow(request):
    await asyncio.sleep(0.2)
    return web.Response(text="slow")

def started(runner):
    print(json.dumps({"port": runner.addresses[0][1]}), flush=True)

async def main():
    app = web.Application()
    app.router.add_get("/slow", slow)
    controller = drain.DrainController(delay=0.1, grace=2.0)
    result = await drain.serve(app, controller, host="127.0.0.1", port=0, on_started=started)
    print(json.dumps({"completed": result.completed, "cancelled": result.cancelled}), flush=True)

asyncio.run(main())
"""


async def status_or_none(url: str) -> int | None:
    try:
        status, _, _ = await fetch(url)
    except REFUSED:
        return None
    return status


@pytest.mark.task(taskno=5, points=3)
async def test_sigterm_drains_a_real_process():
    # A real child process, so a missing signal handler kills the child, not the grader.
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, drain.__file__,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        line = await asyncio.wait_for(child.stdout.readline(), timeout=10)
        if not line:
            errors = (await child.stderr.read()).decode(errors="replace").strip()
            last = errors.splitlines()[-1] if errors else "(no output)"
            if "NotImplementedError" in errors:
                raise NotImplementedError(f"serve() in a child process: {last}")
            raise AssertionError(f"the child process exited before on_started(runner) ran: {last}")
        url = "http://127.0.0.1:%d" % json.loads(line)["port"]

        request = asyncio.create_task(fetch(url + "/slow"))
        # The request is in the handler by now (and would still be served during the delay).
        await asyncio.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        readiness = []
        for _ in range(20):
            readiness.append(await status_or_none(url + "/readyz"))
            if readiness[-1] != 200:
                break
            await asyncio.sleep(0.005)
        answer = await outcomes(request, timeout=3.0)
        out, err = await asyncio.wait_for(child.communicate(), timeout=5)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()

    assert child.returncode != -signal.SIGTERM, (
        "the child died of SIGTERM: serve() must install a handler with "
        "loop.add_signal_handler(signal.SIGTERM, ...) before calling on_started"
    )
    errors = err.decode(errors="replace").strip().splitlines()
    assert child.returncode == 0, (
        f"serve() must return after draining; the child exited {child.returncode}: {errors[-1:]}"
    )
    assert 503 in readiness, (
        f"after SIGTERM, /readyz must answer 503 during the delay; it answered {readiness}"
    )
    assert isinstance(answer[0], tuple) and answer[0][0] == 200, (
        f"the request in flight at SIGTERM must complete; it got {answer[0]!r}"
    )
    report = json.loads(out.decode().strip().splitlines()[-1])
    # Completed while draining: the slow request and every /readyz that answered 503.
    expected = {"completed": 1 + readiness.count(503), "cancelled": 0}
    assert report == expected, (
        f"serve() must return the drain's DrainResult; expected {expected}, got {report}"
    )
