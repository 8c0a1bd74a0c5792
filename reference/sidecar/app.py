"""The sidecar: an inbound and an outbound listener around one app, configured remotely."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from reference import admin
from reference.config_sync import ConfigStore, ConfigSync, Snapshot
from reference.drain import UNWIND_TIMEOUT, DrainController, DrainResult
from reference.http_listener import ProxyListener, drain_aware
from reference.metrics import Registry
from reference.proxy import InboundForwarder, OutboundProxy, create_upstream_session
from reference.proxy_config import ProxyConfig, parse_proxy_config

__all__ = [
    "SIDECAR",
    "Ports",
    "Sidecar",
    "SidecarOptions",
    "create_admin_app",
    "create_inbound_server",
    "create_outbound_server",
    "serve",
]


@dataclass(frozen=True)
class SidecarOptions:
    """What one sidecar serves: whose config, which local app, where the control plane is."""

    service: str
    app_address: str  # "host:port" of the app next to this sidecar
    control_plane: str = "http://127.0.0.1:7070"
    cache_path: str | None = None  # the last good config, served while the control plane is down
    wait: float = 30.0  # seconds the control plane may hold one long poll
    poll_interval: float = 0.0  # > 0: poll this often without long-polling (wait is then 0)
    # The outbound fast lane (OutboundProxy.handle_nowait); off, every request goes through
    # handle(), which the lab uses to measure what the fast lane is worth.
    fast_lane: bool = True


@dataclass(frozen=True)
class Ports:
    """The ports the three listeners ended up on (useful with port 0)."""

    inbound: int
    outbound: int
    admin: int


class Sidecar:
    """What the three listeners share: the upstream session, the config, the two proxies."""

    def __init__(self, options: SidecarOptions, *, drain: DrainController | None = None) -> None:
        self.options = options
        self.drain = drain if drain is not None else DrainController()
        self.metrics = Registry()
        self.store = ConfigStore(validator=parse_proxy_config)
        # Created in lifecycle(): an aiohttp ClientSession needs a running event loop.
        self.inbound: InboundForwarder | None = None
        self.outbound: OutboundProxy | None = None
        self.sync: ConfigSync | None = None
        self._version = self.metrics.gauge(
            "sidecarlab_config_version", "The config version in use (0: none yet).", ("service",)
        ).labels(options.service)

    async def lifecycle(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: open sessions and start config sync; undo both at shutdown."""
        upstream_session = create_upstream_session()
        # The control plane gets a session of its own: a long poll holds a connection for up to
        # `wait` seconds, and must never queue behind, or be cut by, the data path.
        control_session = aiohttp.ClientSession()
        self.inbound = InboundForwarder(upstream_session, self.options.app_address)
        self.outbound = OutboundProxy(upstream_session, metrics=self.metrics, name="outbound")
        self.metrics.counter(
            "sidecarlab_inbound_requests_total", "Requests forwarded to the local app."
        ).track(lambda: {(): self.inbound.requests if self.inbound else 0})
        unsubscribe = self.store.subscribe(self._apply)
        self.sync = ConfigSync(
            control_session,
            self.options.control_plane,
            self.options.service,
            self.store,
            wait=0.0 if self.options.poll_interval > 0 else self.options.wait,
            interval=self.options.poll_interval,
            cache_path=self.options.cache_path,
        )
        await self.sync.start()  # applies the cached config, if any, before returning
        try:
            yield
        finally:
            await self.sync.stop()
            unsubscribe()
            await control_session.close()
            await upstream_session.close()

    def _apply(self, snapshot: Snapshot) -> None:
        # The store validated this exact document already; parsing again only builds objects.
        config = parse_proxy_config(snapshot.config)
        assert self.outbound is not None and self.inbound is not None
        self.outbound.apply(config)
        self.inbound.max_body_bytes = config.max_body_bytes
        self._version.set(snapshot.version)

    def not_ready(self) -> str | None:
        """Why the sidecar should not receive traffic yet, or None."""
        if self.store.current is None:
            return "no config yet"
        return None

    def config_view(self) -> dict[str, Any]:
        """What GET /config shows: the version in use, the config and the breakers' states."""
        current = self.store.current
        config: ProxyConfig | None = self.outbound.config if self.outbound else None
        sync_error = self.sync.last_error if self.sync else None
        return {
            "service": self.options.service,
            "version": None if current is None else current.version,
            "config": None if config is None else config.to_dict(),
            "breakers": {
                name: breaker.state.value
                for name, breaker in (self.outbound.breakers if self.outbound else {}).items()
            },
            "sync_error": None if sync_error is None else str(sync_error),
        }

    # The handlers delegate because the proxies exist only once lifecycle() has run.
    async def handle_inbound(self, request: web.BaseRequest) -> web.StreamResponse:
        """Forward a request from another service to the local app."""
        return await self.inbound.handle(request)  # type: ignore[union-attr]

    async def handle_outbound(self, request: web.BaseRequest) -> web.StreamResponse:
        """Route a call of the local app to another service."""
        return await self.outbound.handle(request)  # type: ignore[union-attr]


SIDECAR = web.AppKey("sidecar", Sidecar)


# The two proxy listeners are ProxyListeners: aiohttp's parser and response types without its
# per-request server machinery, which cost a proxy more than the forwarding itself. No
# client_max_size either: the proxy streams request.content, enforcing max_body_bytes itself.
def create_inbound_server(sidecar: Sidecar) -> ProxyListener:
    """The inbound listener: everything goes to the local app; drain-aware."""
    return ProxyListener(drain_aware(sidecar.drain, sidecar.handle_inbound),
                         shutdown_timeout=UNWIND_TIMEOUT)


def create_outbound_server(sidecar: Sidecar) -> ProxyListener:
    """The outbound listener: the local app's calls, routed by their Host field."""
    # The proxy exists once lifecycle() ran (serve() starts the admin listener first); its
    # handler is then served directly, without a delegating call per request.
    handler = sidecar.handle_outbound if sidecar.outbound is None else sidecar.outbound.handle
    fast = (sidecar.outbound.handle_nowait
            if sidecar.outbound is not None and sidecar.options.fast_lane else None)
    return ProxyListener(handler, fast=fast, shutdown_timeout=UNWIND_TIMEOUT)


def create_admin_app(sidecar: Sidecar) -> web.Application:
    """The admin listener's app; it also owns the shared resources (see serve())."""
    app = admin.create_admin_app(
        drain=sidecar.drain,
        metrics=sidecar.metrics,
        config_view=sidecar.config_view,
        not_ready=sidecar.not_ready,
    )
    app[SIDECAR] = sidecar
    # The admin listener starts first and stops last, so the session and the config sync
    # live exactly as long as any listener that needs them.
    app.cleanup_ctx.append(sidecar.lifecycle)
    return app


async def _start(runner: web.BaseRunner | ProxyListener, host: str,
                 port: int) -> tuple[web.BaseRunner | ProxyListener, int]:
    if isinstance(runner, ProxyListener):
        return runner, await runner.start(host, port)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]


def _admin_runner(app: web.Application) -> web.AppRunner:
    # access_log=None: one log line per probe and scrape is noise.
    # handle_signals=False: SIGTERM starts a drain, it must not stop the loop.
    # The short shutdown_timeout only bounds cleanup: the drain has already waited.
    return web.AppRunner(app, access_log=None, handle_signals=False,
                         shutdown_timeout=UNWIND_TIMEOUT)


# --8<-- [start:serve]
async def serve(
    sidecar: Sidecar,
    *,
    inbound_host: str = "0.0.0.0",
    inbound_port: int = 15006,
    outbound_host: str = "127.0.0.1",
    outbound_port: int = 15001,
    admin_port: int = 15000,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    on_started: Callable[[Ports], object] | None = None,
) -> DrainResult:
    """Run the three listeners until SIGTERM or preStop, drain, then shut down in order."""
    loop = asyncio.get_running_loop()
    drain = sidecar.drain
    runners: list[web.BaseRunner | ProxyListener] = []
    installed: list[signal.Signals] = []
    try:
        admin_runner, admin_bound = await _start(_admin_runner(create_admin_app(sidecar)),
                                                 admin.ADMIN_HOST, admin_port)
        runners.append(admin_runner)
        outbound_runner, outbound_bound = await _start(
            create_outbound_server(sidecar), outbound_host, outbound_port
        )
        runners.append(outbound_runner)
        inbound_runner, inbound_bound = await _start(
            create_inbound_server(sidecar), inbound_host, inbound_port
        )
        runners.append(inbound_runner)
        for sig in signals:
            loop.add_signal_handler(sig, drain.start_drain)
            installed.append(sig)
        if on_started is not None:
            on_started(Ports(inbound_bound, outbound_bound, admin_bound))
        await drain.wait_started()
        # Inbound first: readiness fails, new requests are still served for `delay`, then the
        # listener closes and in-flight requests finish. The outbound listener stays open all
        # that time, because those requests may still need to call other services.
        result = await drain.drain(inbound_runner)
        await drain.stop_accepting(outbound_runner)
        return result
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        # Reverse start order: inbound, outbound, then admin (which closes the sessions).
        for runner in reversed(runners):
            await runner.cleanup()
# --8<-- [end:serve]
