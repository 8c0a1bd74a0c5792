"""Drain an aiohttp server gracefully while Kubernetes terminates its pod.

Exercise 04: fill in every method that raises NotImplementedError, step by step
(see README.md in this folder). Grade your work with `pytest exercises/04_prestop_drain`.
"""

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


@dataclass(frozen=True)
class DrainResult:
    """What a drain did: requests it let finish, and those the grace deadline cut off.

    `completed` counts requests whose handler finished (without being cancelled) after the
    drain started; `cancelled_requests` names each request cancelled at the grace deadline
    as "METHOD /path", e.g. "GET /stuck"; `elapsed` is seconds from drain start to the end,
    by the controller's clock.
    """

    completed: int
    cancelled_requests: tuple[str, ...]
    elapsed: float

    @property
    def cancelled(self) -> int:
        """How many in-flight requests were cancelled at the grace deadline."""
        return len(self.cancelled_requests)


class DrainController:
    """Readiness, in-flight tracking and the drain sequence for one aiohttp server."""

    def __init__(
        self,
        *,
        delay: float = 5.0,
        grace: float = 25.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        """`delay`: seconds to keep serving new requests after the drain starts.

        `grace`: seconds from the drain start until in-flight handlers are cancelled.
        `clock` and `sleep` are injected so the timing can be controlled; use them, not
        time.monotonic() and asyncio.sleep() directly.
        """
        if not 0 <= delay <= grace:
            raise ValueError(f"need 0 <= delay <= grace, got delay={delay} grace={grace}")
        self.delay = delay
        self.grace = grace
        self._clock = clock
        self._sleep = sleep
        # Add the state your steps need here.

    @property
    def draining(self) -> bool:
        """True once a drain has started; it never goes back."""
        # TODO(step 1)
        raise NotImplementedError("DrainController.draining")

    @property
    def in_flight(self) -> int:
        """How many requests are inside a handler right now."""
        # TODO(step 3)
        raise NotImplementedError("DrainController.in_flight")

    def start_drain(self) -> None:
        """Start draining: readiness fails from now on.

        Record when the drain started (by `clock`); calling it again changes nothing, because
        a preStop hook and the SIGTERM after it both start the same drain.
        """
        # TODO(step 1)
        raise NotImplementedError("DrainController.start_drain")

    async def wait_started(self) -> None:
        """Return once a drain has started (at once if it already has)."""
        # TODO(step 5)
        raise NotImplementedError("DrainController.wait_started")

    async def healthz(self, request: web.Request) -> web.Response:
        """Liveness: 200 while the process works, draining or not."""
        # TODO(step 1)
        raise NotImplementedError("DrainController.healthz")

    async def readyz(self, request: web.Request) -> web.Response:
        """Readiness: 200 until the drain starts, then 503."""
        # TODO(step 1)
        raise NotImplementedError("DrainController.readyz")

    async def prestop(self, request: web.Request) -> web.Response:
        """The preStop hook: start the drain and answer 202 Accepted at once."""
        # TODO(step 1)
        raise NotImplementedError("DrainController.prestop")

    def install(self, app: web.Application) -> None:
        """Plug the controller into `app`.

        Step 1: store the controller under `app[DRAIN]` and add `GET /healthz` and
        `GET /readyz`. Step 3: also append `self.middleware` to `app.middlewares` and
        `self.on_response_prepare` to `app.on_response_prepare`.
        """
        # TODO(step 1), then extend it in step 3
        raise NotImplementedError("DrainController.install")

    def admin_app(self) -> web.Application:
        """Return a new app with `POST /drain` (the preStop hook), for a 127.0.0.1 listener."""
        # TODO(step 1)
        raise NotImplementedError("DrainController.admin_app")

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Count the request as in flight while `handler` runs.

        Remember the current task with a "METHOD /path" label so the drain can wait for it
        and, at the deadline, cancel it; count it as completed if it finishes while draining
        without being cancelled.
        """
        # TODO(step 3)
        raise NotImplementedError("DrainController.middleware")

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """While draining, make `response` carry `Connection: close` and close its connection."""
        # TODO(step 3)
        raise NotImplementedError("DrainController.on_response_prepare")

    async def stop_accepting(self, runner: web.BaseRunner) -> None:
        """Close the listening sockets of `runner`; open connections finish what they carry."""
        # TODO(step 2)
        raise NotImplementedError("DrainController.stop_accepting")

    async def drain(self, runner: web.BaseRunner) -> DrainResult:
        """Drain `runner` and report.

        Step 2: start the drain, keep serving until `delay` after its start, then stop
        accepting. Step 3: then wait for the requests in flight. Step 4: at `grace` after the
        start, cancel what is still running, log a warning for each, and report it.
        """
        # TODO(step 2), then extend it in steps 3 and 4
        raise NotImplementedError("DrainController.drain")


DRAIN = web.AppKey("drain", DrainController)


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
    """Serve `app` until a signal or the preStop hook starts a drain; drain, clean up, report.

    Install the controller on `app`, listen on host:port with web.AppRunner and
    web.TCPSite (and `controller.admin_app()` on 127.0.0.1:admin_port if given), make each
    of `signals` start the drain via loop.add_signal_handler, then call
    `on_started(runner)`. Wait for the drain to start, run it, and return its DrainResult;
    whatever happens, remove the signal handlers and clean up the runners.
    """
    # TODO(step 5)
    raise NotImplementedError("serve")
