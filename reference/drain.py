"""Drain an aiohttp server gracefully while Kubernetes terminates its pod."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web

__all__ = ["DRAIN", "DrainController", "DrainResult", "serve"]

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# How long cancelled handlers get to run their `finally` blocks before the drain reports them
# anyway; a handler that swallows CancelledError must not hold the shutdown hostage.
UNWIND_TIMEOUT = 1.0


@dataclass(frozen=True)
class DrainResult:
    """What a drain did: requests it let finish, and those the grace deadline cut off."""

    completed: int
    cancelled_requests: tuple[str, ...]
    elapsed: float

    @property
    def cancelled(self) -> int:
        """How many in-flight requests were cancelled at the grace deadline."""
        return len(self.cancelled_requests)


class DrainController:
    """Readiness, in-flight tracking and the drain sequence for one aiohttp server."""

    # Defaults: `delay` matches Istio's terminationDrainDuration (5 s); `grace` leaves 5 s of
    # Kubernetes' default terminationGracePeriodSeconds (30 s) before the kubelet's SIGKILL.
    def __init__(
        self,
        *,
        delay: float = 5.0,
        grace: float = 25.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        if not 0 <= delay <= grace:
            raise ValueError(f"need 0 <= delay <= grace, got delay={delay} grace={grace}")
        self.delay = delay
        self.grace = grace
        self._clock = clock
        self._sleep = sleep
        self._started_at: float | None = None
        self._started = asyncio.Event()
        self._in_flight: dict[asyncio.Task[object], str] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._completed = 0

    @property
    def draining(self) -> bool:
        """True once a drain has started; it never goes back."""
        return self._started_at is not None

    @property
    def in_flight(self) -> int:
        """How many requests are inside a handler right now."""
        return len(self._in_flight)

    # --8<-- [start:probes]
    def start_drain(self) -> None:
        """Start draining: readiness fails from now on; a second call changes nothing."""
        if self._started_at is not None:
            return
        self._started_at = self._clock()
        self._started.set()
        log.info("drain started: readiness fails now, new requests served for %.3gs", self.delay)

    async def wait_started(self) -> None:
        """Return once a drain has started."""
        await self._started.wait()

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: 200 while the process works, draining or not."""
        # A failing liveness probe makes the kubelet kill the container, which would cut
        # off the very requests the drain is waiting for.
        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness: 200 until the drain starts, then 503 so the endpoint leaves the Service."""
        if self.draining:
            return web.Response(status=503, text="draining")
        return web.Response(text="ok")

    async def prestop(self, request: web.Request) -> web.Response:
        """The preStop hook: start the drain and answer 202 at once."""
        # Returning at once lets the kubelet send SIGTERM right away; the delay still counts
        # from this first call, because start_drain() ignores the second start.
        self.start_drain()
        return web.json_response({"draining": True, "delay": self.delay}, status=202)
    # --8<-- [end:probes]

    def install(self, app: web.Application) -> None:
        """Plug the controller into `app`: state key, probes, tracking and `Connection: close`."""
        app[DRAIN] = self
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.middlewares.append(self.middleware)
        app.on_response_prepare.append(self.on_response_prepare)

    def admin_app(self) -> web.Application:
        """An app with `POST /drain`, for a listener on 127.0.0.1 that a preStop exec hook calls."""
        # Kept off the serving app: the drain closes that listener, and the admin one must
        # keep answering (and must not count as in-flight work).
        app = web.Application()
        app[DRAIN] = self
        app.router.add_post("/drain", self.prestop)
        return app

    # --8<-- [start:track]
    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count the request as in flight while its handler runs."""
        # aiohttp runs each request in a task of its own, so this task is the one to cancel
        # at the grace deadline, and cancelling it leaves other requests alone.
        task = asyncio.current_task()
        assert task is not None
        self._in_flight[task] = f"{request.method} {request.path}"
        self._idle.clear()
        cancelled = False
        try:
            return await handler(request)
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            del self._in_flight[task]
            if self.draining and not cancelled:
                self._completed += 1
            if not self._in_flight:
                self._idle.set()

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """While draining, send `Connection: close` so keep-alive clients reconnect elsewhere."""
        # A signal, not the middleware: it also sees responses the middleware never returns,
        # such as a 404 raised by the router.
        if self.draining:
            # force_close() makes aiohttp close the connection after this response; the
            # header tells the client, since aiohttp has already written its own by now.
            response.force_close()
            response.headers["Connection"] = "close"
    # --8<-- [end:track]

    # --8<-- [start:drain]
    async def stop_accepting(self, runner: web.BaseRunner) -> None:
        """Close the listening sockets of `runner`; open connections finish what they carry."""
        for site in list(runner.sites):
            # asyncio's Server.close() closes the listening socket only: new connections are
            # refused, accepted ones stay open for their in-flight requests.
            await site.stop()
        if runner.server is not None:
            # An idle keep-alive connection would carry new requests past the closed
            # listener; close() ends it now, or after the response it is busy with.
            for connection in runner.server.connections:
                connection.close()
        log.info("drain: listener closed, %d request(s) in flight", self.in_flight)

    async def drain(self, runner: web.BaseRunner) -> DrainResult:
        """Drain `runner`: serve for `delay`, stop accepting, cancel what outlives `grace`."""
        self.start_drain()
        assert self._started_at is not None
        started = self._started_at
        # Endpoint removal lags behind readiness: load balancers, kube-proxy and sidecars
        # keep sending new requests for a while, so keep serving them until `delay`.
        await self._sleep(max(0.0, started + self.delay - self._clock()))
        await self.stop_accepting(runner)
        remaining = started + self.grace - self._clock()
        if self._in_flight:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout=max(0.0, remaining))
            except TimeoutError:
                pass  # the deadline passed: what is still running is cancelled below
        cancelled = await self._cancel_in_flight()
        result = DrainResult(
            completed=self._completed,
            cancelled_requests=cancelled,
            elapsed=self._clock() - started,
        )
        log.info(
            "drain done in %.3fs: %d completed, %d cancelled",
            result.elapsed, result.completed, result.cancelled,
        )
        return result

    async def _cancel_in_flight(self) -> tuple[str, ...]:
        stuck = dict(self._in_flight)
        for task, label in stuck.items():
            log.warning("drain: grace period over, cancelling %s", label)
            task.cancel()
        if stuck:
            await asyncio.wait(stuck, timeout=UNWIND_TIMEOUT)
        return tuple(stuck.values())
    # --8<-- [end:drain]


DRAIN = web.AppKey("drain", DrainController)


# --8<-- [start:serve]
async def serve(
    app: web.Application,
    controller: DrainController,
    *,
    host: str = "0.0.0.0",
    port: int = 8080,
    admin_port: int | None = None,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    on_started: Callable[[web.AppRunner], object] | None = None,
) -> DrainResult:
    """Serve `app` until a signal or the preStop hook starts a drain; drain, clean up, report."""
    controller.install(app)
    loop = asyncio.get_running_loop()
    # handle_signals=False: aiohttp's own handler raises GracefulExit, which would skip the
    # drain. The short shutdown_timeout only bounds cleanup: the drain already waited.
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=UNWIND_TIMEOUT)
    await runner.setup()
    admin: web.AppRunner | None = None
    installed: list[signal.Signals] = []
    try:
        await web.TCPSite(runner, host, port).start()
        if admin_port is not None:
            admin_runner = web.AppRunner(controller.admin_app())
            await admin_runner.setup()
            admin = admin_runner
            # Loopback only: whoever can reach this port can take the pod out of service.
            await web.TCPSite(admin, "127.0.0.1", admin_port).start()
        # Handlers go in before on_started: a SIGTERM sent as soon as the port is known
        # must start a drain, not kill the process.
        for sig in signals:
            loop.add_signal_handler(sig, controller.start_drain)
            installed.append(sig)
        if on_started is not None:
            on_started(runner)
        await controller.wait_started()
        return await controller.drain(runner)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        if admin is not None:
            await admin.cleanup()
# --8<-- [end:serve]
